// kartahook's operator console: one plain script, no framework, no build step.
//
// - Signs in with the admin token (kept in sessionStorage, sent as a Bearer token) and calls
//   only the admin API under /admin.
// - Every piece of server data reaches the page through textContent or an attribute set with
//   setAttribute: never innerHTML. The Content-Security-Policy allows no inline script.
// - Views live in the URL's hash (#/events?payment_id=…), so a view can be bookmarked and the
//   back button works. The current view refreshes itself every 5 s, paused while a form is
//   being edited, while an action runs, and while the tab is hidden.
// - An endpoint the server does not have (an older kartahook) shows "not available".
"use strict";

(() => {
  const TOKEN_KEY = "kartahook.console.token";
  const POLL_MS = 5000;
  const PAGE = 50;

  const $ = (id) => document.getElementById(id);
  const state = { busy: false, timer: null, lastUpdate: null, rendering: false, generation: 0 };

  // --- DOM helpers (text only) --------------------------------------------------------------

  // h("a", {href: "#/x", class: "c"}, "text", child, [more]) -> element; strings become text.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith("on") && typeof value === "function") {
        el.addEventListener(name.slice(2), value);
      } else if (value === true) {
        el.setAttribute(name, "");
      } else {
        el.setAttribute(name, String(value));
      }
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      if (Array.isArray(child)) append(el, child);
      else if (child instanceof Node) el.appendChild(child);
      else el.appendChild(document.createTextNode(String(child)));
    }
  }

  function text(value) {
    return value === null || value === undefined || value === "" ? "—" : String(value);
  }

  function time(ms) {
    if (ms === null || ms === undefined || ms === "") return "—";
    const date = new Date(Number(ms));
    if (Number.isNaN(date.getTime())) return String(ms);
    return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  // HH:MM:SS.mmm (UTC): the timeline's entries are often milliseconds apart.
  function clock(ms) {
    const date = new Date(Number(ms));
    return Number.isNaN(date.getTime()) ? String(ms) : date.toISOString().slice(11, 23);
  }

  function table(headers, rows, caption) {
    if (!rows.length) return h("p", { class: "muted" }, "Nothing to show.");
    return h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        {},
        caption ? h("caption", {}, caption) : null,
        h("thead", {}, h("tr", {}, headers.map((name) => h("th", { scope: "col" }, name)))),
        h(
          "tbody",
          {},
          rows.map((cells) => h("tr", {}, cells.map((cell) => h("td", {}, cell))))
        )
      )
    );
  }

  function badge(value) {
    const word = text(value);
    return h("span", { class: "badge badge-" + word.replace(/[^a-z-]/gi, "") }, word);
  }

  function link(href, label) {
    return h("a", { href, "data-key": "link:" + href }, label);
  }

  function button(label, onclick, key, extra) {
    return h("button", { type: "button", "data-key": key || "button:" + label, onclick, ...extra }, label);
  }

  function hashFor(view, params) {
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(params || {})) {
      if (value !== null && value !== undefined && value !== "") query.set(name, value);
    }
    const q = query.toString();
    return "#/" + view + (q ? "?" + q : "");
  }

  // Shows the view of `hash` (rendered again when the hash is already that one).
  function go(hash) {
    if (location.hash === hash) render(true);
    else location.hash = hash;
  }

  const enc = encodeURIComponent;
  const paymentLink = (id) => (id ? link("#/payment/" + enc(id), id) : "—");
  const deliveryLink = (sub, wid) => link("#/delivery/" + enc(sub) + "/" + enc(wid), wid);

  // --- the admin API ----------------------------------------------------------------------------

  class HttpError extends Error {
    constructor(status, code, detail) {
      super(detail || code);
      this.status = status;
      this.code = code;
      this.detail = detail;
    }
    // The server has no such route (an endpoint this version of kartahook lacks).
    get unavailable() {
      return (this.status === 404 && this.code === "not_found") || this.status === 405;
    }
  }

  const token = () => sessionStorage.getItem(TOKEN_KEY) || "";

  async function api(method, path, body, bearer) {
    const headers = { authorization: "Bearer " + (bearer || token()), accept: "application/json" };
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch("/admin" + path, init);
    } catch (_) {
      throw new HttpError(0, "unreachable", "the admin API cannot be reached");
    }
    const raw = await response.text();
    let data = null;
    if (raw) {
      try {
        data = JSON.parse(raw);
      } catch (_) {
        data = null;
      }
    }
    if (!response.ok) {
      const code = (data && data.error) || "http_" + response.status;
      const detail = (data && data.detail) || response.statusText || code;
      throw new HttpError(response.status, code, detail);
    }
    return data;
  }

  function refusal(err) {
    if (err.code === "invalid_token") return "That admin token is wrong. Check KARTAHOOK_ADMIN_TOKEN and try again.";
    if (err.code === "missing_token") return "Enter the admin token.";
    if (err.code === "admin_disabled") return "The admin API is off on this server: KARTAHOOK_ADMIN_TOKEN is not set.";
    return null;
  }

  function isRefusal(err) {
    return err instanceof HttpError && (err.status === 401 || err.status === 403);
  }

  function errorBox(err, what) {
    if (err instanceof HttpError && err.unavailable) {
      return h("p", { class: "unavailable" }, (what || "This view") + " is not available on this server (no such admin endpoint).");
    }
    const message = err instanceof HttpError ? err.status + " " + err.code + ": " + err.detail : String(err);
    return h("p", { class: "error", role: "alert" }, message);
  }

  // --- messages that outlive a refresh (a rotated secret is shown once) ----------------------

  function flash(kind, ...content) {
    const box = $("flash");
    const item = h(
      "div",
      { class: "message message-" + kind, role: kind === "error" ? "alert" : null },
      h("div", { class: "message-body" }, content),
      button("Dismiss", () => {
        item.remove();
        $("main").focus();
      }, "dismiss:" + Math.random())
    );
    box.appendChild(item);
    while (box.children.length > 4) box.firstChild.remove();
  }

  // Runs an action (a POST), then refreshes the view. Errors become a message.
  async function act(run, success) {
    state.busy = true;
    try {
      const result = await run();
      if (success) success(result);
    } catch (err) {
      if (isRefusal(err)) return signOut(refusal(err));
      flash("error", err instanceof HttpError && err.unavailable ? "Not available on this server." : err.message);
    } finally {
      state.busy = false;
    }
    await render(false);
  }

  // --- views ------------------------------------------------------------------------------------

  function section(title, ...children) {
    return h("section", {}, h("h2", {}, title), children);
  }

  function searchForm(id, fields, params, view, label) {
    const form = h(
      "form",
      { class: "search", id, role: "search", "aria-label": label },
      fields.map(([name, title, kind, options]) => {
        const inputId = id + "-" + name;
        const control =
          kind === "select"
            ? h(
                "select",
                { id: inputId, name },
                options.map((opt) => h("option", { value: opt, selected: (params.get(name) || "") === opt }, opt || "any"))
              )
            : h("input", { id: inputId, name, type: "text", value: params.get(name) || "", placeholder: kind || null, autocomplete: "off" });
        return h("div", { class: "field" }, h("label", { for: inputId }, title), control);
      }),
      h("div", { class: "field actions" }, h("button", { type: "submit" }, "Search"), h("button", { type: "reset" }, "Clear"))
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      delete form.dataset.dirty;
      go(hashFor(view, Object.fromEntries(new FormData(form).entries())));
    });
    form.addEventListener("reset", (event) => {
      event.preventDefault();
      delete form.dataset.dirty;
      go(hashFor(view, {}));
    });
    return form;
  }

  function pager(view, params, next) {
    const links = [];
    if (params.get("cursor")) {
      const first = Object.fromEntries(params.entries());
      delete first.cursor;
      links.push(link(hashFor(view, first), "First page"));
    }
    if (next) links.push(link(hashFor(view, { ...Object.fromEntries(params.entries()), cursor: next }), "Next page"));
    return links.length ? h("p", { class: "pager" }, links) : null;
  }

  function listQuery(params, names) {
    const query = new URLSearchParams({ limit: String(PAGE) });
    for (const name of [...names, "cursor"]) {
      const value = params.get(name);
      if (value) query.set(name, value);
    }
    return query.toString();
  }

  async function overviewView() {
    const out = [h("h1", {}, "Overview")];
    let data;
    try {
      data = await api("GET", "/overview");
    } catch (err) {
      if (!(err instanceof HttpError && err.unavailable)) throw err;
      out.push(errorBox(err, "The overview"));
      out.push(await overviewFallback());
      return out;
    }
    const figures = [
      ["Backlog", data.backlog, null],
      ["Dead letters (deliveries)", data.dead_letters, "#/dead-letters"],
      ["Dead letters (events)", data.event_dead_letters, "#/dead-letters"],
      ["Stuck payments", data.stuck, null],
    ];
    out.push(
      h(
        "dl",
        { class: "figures" },
        figures.map(([name, value, href]) =>
          h("div", { class: "figure" }, h("dt", {}, name), h("dd", {}, href ? link(href, text(value)) : text(value)))
        )
      )
    );
    const rates = data.rates || {};
    const events = Object.entries(rates.events_5m || {}).sort();
    const deliveries = rates.deliveries_5m || {};
    out.push(
      section(
        "Last 5 minutes",
        table(["Source", "Events"], events.map(([source, count]) => [link(hashFor("events", { source }), source), text(count)]), "Events received per source"),
        table(["Delivered", "Failed attempts"], [[text(deliveries.delivered), text(deliveries.failed)]], "Deliveries")
      )
    );
    out.push(section("Subscriber health", healthTable(data.subscribers || [])));
    return out;
  }

  async function overviewFallback() {
    const [letters, events, stuck] = await Promise.all([
      api("GET", "/dead-letters?limit=1"),
      api("GET", "/events/dead-letters?limit=1"),
      api("GET", "/payments/stuck?limit=1").catch(() => null),
    ]);
    return h(
      "dl",
      { class: "figures" },
      h("div", { class: "figure" }, h("dt", {}, "Dead letters (deliveries)"), h("dd", {}, link("#/dead-letters", text(letters.total)))),
      h("div", { class: "figure" }, h("dt", {}, "Dead letters (events)"), h("dd", {}, text(events.total))),
      h("div", { class: "figure" }, h("dt", {}, "Stuck payments"), h("dd", {}, text(stuck && stuck.total)))
    );
  }

  function healthTable(subscribers) {
    return table(
      ["Subscriber", "Enabled", "Breaker", "In flight", "Waiting", "Dead letters"],
      subscribers.map((s) => [
        link(hashFor("deliveries", { subscriber: s.id }), s.id),
        s.enabled ? "yes" : "no",
        h("span", {}, badge(s.breaker), s.open_until_ms ? " until " + time(s.open_until_ms) : ""),
        text(s.inflight),
        text(s.waiting),
        s.dead_letters ? link("#/dead-letters", String(s.dead_letters)) : "0",
      ])
    );
  }

  async function eventsView(params) {
    const out = [
      h("h1", {}, "Events"),
      searchForm(
        "events-search",
        [
          ["source", "Source"],
          ["event_id", "Event id"],
          ["payment_id", "Payment id"],
          ["since", "Since", "ISO time or ms"],
          ["until", "Until", "ISO time or ms"],
        ],
        params,
        "events",
        "Search events"
      ),
    ];
    try {
      const page = await api("GET", "/events?" + listQuery(params, ["source", "event_id", "payment_id", "since", "until"]));
      out.push(
        table(
          ["Received", "Source", "Event id", "Payment", "Status"],
          page.items.map((e) => [
            time(e.received_ms),
            e.source,
            link(eventHash(e), e.event_id),
            paymentLink(e.payment_id),
            badge(e.status),
          ]),
          "Newest first"
        ),
        pager("events", params, page.next_cursor)
      );
    } catch (err) {
      if (isRefusal(err)) throw err;
      out.push(errorBox(err, "Event history"));
    }
    return out;
  }

  // An event's view; its payment's id goes along: events are kept by payment, and once its job
  // has run the API finds an event only with it.
  function eventHash(e) {
    const hash = "#/event/" + enc(e.source) + "/" + enc(e.event_id);
    return e.payment_id ? hash + "?" + new URLSearchParams({ payment_id: e.payment_id }).toString() : hash;
  }

  async function eventView(source, eventId, paymentId) {
    const out = [h("h1", {}, "Event " + eventId), h("p", {}, link("#/events", "All events"))];
    try {
      const query = paymentId ? "?" + new URLSearchParams({ payment_id: paymentId }).toString() : "";
      const e = await api("GET", "/events/" + enc(source) + "/" + enc(eventId) + query);
      out.push(
        h(
          "dl",
          { class: "facts" },
          [
            ["Source", e.source],
            ["Event id", e.event_id],
            ["Payment", paymentLink(e.payment_id)],
            ["Received", time(e.received_ms)],
            ["Status", badge(e.status)],
          ].map(([name, value]) => [h("dt", {}, name), h("dd", {}, value)])
        ),
        section("Headers", table(["Header", "Value"], Object.entries(e.headers || {}).map(([name, value]) => [name, text(value)]))),
        section("Body", e.body === null || e.body === undefined ? h("p", { class: "muted" }, "Not retained any more.") : h("pre", { class: "body" }, pretty(e.body)))
      );
    } catch (err) {
      if (isRefusal(err)) throw err;
      out.push(errorBox(err, "Event details"));
    }
    return out;
  }

  // A JSON body indented for reading; any other body as it is.
  function pretty(body) {
    try {
      return JSON.stringify(JSON.parse(body), null, 2);
    } catch (_) {
      return body;
    }
  }

  function paymentForm(current) {
    const form = h(
      "form",
      { class: "search", id: "payment-search", role: "search", "aria-label": "Find a payment" },
      h("div", { class: "field" }, h("label", { for: "payment-id" }, "Payment id"), h("input", { id: "payment-id", name: "payment_id", type: "text", value: current || "", required: true, autocomplete: "off" })),
      h("div", { class: "field actions" }, h("button", { type: "submit" }, "Show timeline"))
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      delete form.dataset.dirty;
      const id = new FormData(form).get("payment_id").trim();
      if (id) go("#/payment/" + enc(id));
    });
    return form;
  }

  function details(entry, skip) {
    const parts = [];
    for (const [name, value] of Object.entries(entry)) {
      if (skip.includes(name) || value === null || value === undefined || value === "") continue;
      parts.push(h("span", { class: "kv" }, h("span", { class: "k" }, name), " ", typeof value === "object" ? JSON.stringify(value) : String(value)));
    }
    return parts;
  }

  function deliveriesTable(items, withPayment) {
    const headers = ["Subscriber", "Webhook id", "Type", "State", "Attempts", "Last status", "Last error", "Created", "Delivered"];
    if (withPayment) headers.splice(2, 0, "Payment");
    return table(
      headers,
      items.map((d) => {
        const row = [
          d.subscriber,
          deliveryLink(d.subscriber, d.webhook_id),
          text(d.type),
          badge(d.state),
          text(d.attempts),
          text(d.last_status),
          text(d.last_error),
          time(d.created_ms),
          time(d.delivered_ms),
        ];
        if (withPayment) row.splice(2, 0, paymentLink(d.payment_id));
        return row;
      })
    );
  }

  async function paymentView(paymentId) {
    const out = [h("h1", {}, paymentId ? "Payment " + paymentId : "Payment"), paymentForm(paymentId)];
    if (!paymentId) {
      out.push(h("p", { class: "muted" }, "Enter a payment id to see its timeline: hints, fetches, transitions, and each delivery with its attempts."));
      return out;
    }
    let p;
    try {
      p = await api("GET", "/payments/" + enc(paymentId));
    } catch (err) {
      if (isRefusal(err)) throw err;
      if (err instanceof HttpError && err.status === 404 && !err.unavailable) {
        out.push(h("p", { class: "error", role: "alert" }, "No payment " + paymentId + " is known: " + err.detail));
      } else {
        out.push(errorBox(err, "Payment history"));
      }
      return out;
    }
    const st = p.state || {};
    const conv = p.convergence || {};
    out.push(
      h(
        "dl",
        { class: "facts", id: "payment-state" },
        [
          ["Status", p.state ? badge(st.status) : "unknown"],
          ["Sequence", text(st.seq)],
          ["Since", text(st.at)],
          ["Terminal", p.terminal ? "yes" : "no"],
          ["Next check", time(conv.next_check_ms)],
          ["Stuck", conv.stuck ? "yes" : "no"],
        ].map(([name, value]) => [h("dt", {}, name), h("dd", {}, value)])
      ),
      section(
        "Timeline",
        (p.timeline || []).length
          ? h(
              "ol",
              { class: "timeline", id: "timeline" },
              p.timeline.map((entry) =>
                h(
                  "li",
                  { class: "entry entry-" + String(entry.kind).replace(/[^a-z]/g, "") },
                  h("time", { class: "when", title: time(entry.at_ms) }, clock(entry.at_ms)),
                  " ",
                  badge(entry.kind),
                  " ",
                  entry.subscriber && entry.webhook_id ? deliveryLink(entry.subscriber, entry.webhook_id) : null,
                  " ",
                  details(entry, entry.subscriber ? ["at_ms", "kind", "webhook_id"] : ["at_ms", "kind"])
                )
              )
            )
          : h("p", { class: "muted" }, "No timeline entries retained.")
      ),
      section("Deliveries", deliveriesTable(p.deliveries || [], false))
    );
    return out;
  }

  async function deliveriesView(params) {
    const out = [
      h("h1", {}, "Deliveries"),
      searchForm(
        "deliveries-search",
        [
          ["subscriber", "Subscriber"],
          ["payment_id", "Payment id"],
          ["state", "State", "select", ["", "queued", "active", "delivered", "dead", "dropped"]],
        ],
        params,
        "deliveries",
        "Filter deliveries"
      ),
    ];
    try {
      const page = await api("GET", "/deliveries?" + listQuery(params, ["subscriber", "payment_id", "state"]));
      out.push(deliveriesTable(page.items, true), pager("deliveries", params, page.next_cursor));
    } catch (err) {
      if (isRefusal(err)) throw err;
      out.push(errorBox(err, "Delivery history"));
    }
    return out;
  }

  async function deliveryView(sub, wid) {
    const out = [h("h1", {}, "Delivery " + wid), h("p", {}, link(hashFor("deliveries", { subscriber: sub }), "Deliveries of " + sub))];
    try {
      const d = await api("GET", "/deliveries/" + enc(sub) + "/" + enc(wid));
      out.push(
        h(
          "dl",
          { class: "facts" },
          [
            ["Subscriber", d.subscriber],
            ["Payment", paymentLink(d.payment_id)],
            ["Type", text(d.type)],
            ["State", badge(d.state)],
            ["Attempts", text(d.attempts)],
            ["Last status", text(d.last_status)],
            ["Last error", text(d.last_error)],
            ["Created", time(d.created_ms)],
            ["Last attempt", time(d.last_ms)],
            ["Delivered", time(d.delivered_ms)],
          ].map(([name, value]) => [h("dt", {}, name), h("dd", {}, value)])
        ),
        h(
          "p",
          {},
          button("Send again (same webhook-id)", () =>
            act(
              () => api("POST", "/deliveries/" + enc(sub) + "/" + enc(wid) + "/resend"),
              () => flash("ok", "Queued " + wid + " for " + sub + " again.")
            ),
            "resend:" + sub + ":" + wid
          )
        ),
        section(
          "Attempts",
          table(
            ["At", "Status", "Error", "Duration (ms)"],
            (d.attempts_log || []).map((a) => [time(a.at_ms), text(a.status), text(a.error), text(a.duration_ms)])
          )
        )
      );
    } catch (err) {
      if (isRefusal(err)) throw err;
      out.push(errorBox(err, "Delivery details"));
    }
    return out;
  }

  async function deadLettersView() {
    const out = [h("h1", {}, "Dead letters")];
    const letters = await api("GET", "/dead-letters?limit=200");
    const replayAll = letters.total
      ? h(
          "p",
          {},
          button(
            "Replay all " + letters.total,
            () => {
              if (!window.confirm("Replay all " + letters.total + " delivery dead letters?")) return;
              act(
                () => api("POST", "/dead-letters/replay", { since: 0 }),
                (r) => flash("ok", "Replayed " + r.replayed.length + " dead letter(s).")
              );
            },
            "replay-all"
          )
        )
      : null;
    out.push(
      section(
        "Deliveries (" + letters.total + ")",
        replayAll,
        table(
          ["Subscriber", "Webhook id", "Payment", "Type", "Attempts", "Dead since", "Last status", "Last error", "Action"],
          letters.dead_letters.map((d) => [
            d.subscriber,
            h("span", { class: "mono" }, d.webhook_id),
            paymentLink(d.payment_id),
            text(d.type),
            text(d.attempts),
            time(d.dead_at_ms),
            text(d.last_status),
            text(d.last_error),
            button(
              "Replay",
              () =>
                act(
                  () => api("POST", "/dead-letters/" + enc(d.subscriber) + "/" + enc(d.webhook_id) + "/replay"),
                  () => flash("ok", "Replayed " + d.webhook_id + " to " + d.subscriber + ".")
                ),
              "replay:" + d.subscriber + ":" + d.webhook_id,
              { "aria-label": "Replay " + d.webhook_id + " to " + d.subscriber }
            ),
          ])
        )
      )
    );
    const events = await api("GET", "/events/dead-letters?limit=200");
    out.push(
      section(
        "Events (" + events.total + ")",
        table(
          ["Entry", "Reason", "Last error", "Dead since", "Action"],
          events.dead_letters.map((e) => [
            h("span", { class: "mono" }, e.id),
            text(e.reason),
            text(e.last_error),
            time(e.dead_at ? e.dead_at * 1000 : null),
            button(
              "Retry",
              () =>
                act(
                  () => api("POST", "/events/dead-letters/" + enc(e.id) + "/retry"),
                  () => flash("ok", "Queued " + e.id + " again.")
                ),
              "retry:" + e.id,
              { "aria-label": "Retry " + e.id }
            ),
          ])
        )
      )
    );
    return out;
  }

  function subscriberActions(s) {
    const id = s.id;
    return h(
      "div",
      { class: "row-actions" },
      s.enabled
        ? button("Disable", () => act(() => api("POST", "/subscribers/" + enc(id) + "/disable"), () => flash("ok", "Disabled " + id + ".")), "disable:" + id, { "aria-label": "Disable " + id })
        : button("Enable", () => act(() => api("POST", "/subscribers/" + enc(id) + "/enable"), () => flash("ok", "Enabled " + id + ".")), "enable:" + id, { "aria-label": "Enable " + id }),
      button(
        "Send test",
        () =>
          act(
            () => api("POST", "/subscribers/" + enc(id) + "/test"),
            (r) =>
              flash(
                r.delivered ? "ok" : "error",
                "Test event to " + id + ": " + (r.delivered ? "delivered" : "not delivered") + ", status " + text(r.status) + (r.error ? ", " + r.error : "") + ", " + text(r.duration_ms) + " ms."
              )
          ),
        "test:" + id,
        { "aria-label": "Send a test event to " + id }
      ),
      button(
        "Rotate secret",
        () => {
          if (!window.confirm("Rotate the signing secret of " + id + "? The old one stays valid for 24 h (both signatures are sent meanwhile).")) return;
          act(
            () => api("POST", "/subscribers/" + enc(id) + "/rotate", { overlap_s: 86400 }),
            (r) =>
              flash(
                "secret",
                "New secret of " + id + " (shown only now; the previous one expires " + time(r.previous_expires_ms) + "): ",
                h("code", { class: "secret" }, r.secret)
              )
          );
        },
        "rotate:" + id,
        { "aria-label": "Rotate the secret of " + id }
      )
    );
  }

  function addSubscriberForm() {
    const form = h(
      "form",
      { id: "add-subscriber", class: "stacked", "aria-label": "Add a subscriber" },
      h("div", { class: "field" }, h("label", { for: "new-id" }, "Id"), h("input", { id: "new-id", name: "id", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9_.\\-]*", maxlength: 64, autocomplete: "off" })),
      h("div", { class: "field wide" }, h("label", { for: "new-url" }, "URL"), h("input", { id: "new-url", name: "url", type: "url", required: true, autocomplete: "off" })),
      h("div", { class: "field" }, h("label", { for: "new-events" }, "Events (comma-separated)"), h("input", { id: "new-events", name: "events", value: "payment.*", autocomplete: "off" })),
      h("div", { class: "field" }, h("label", { for: "new-channels" }, "Channels (optional)"), h("input", { id: "new-channels", name: "channels", autocomplete: "off" })),
      h("div", { class: "field actions" }, h("button", { type: "submit" }, "Add subscriber"))
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const values = Object.fromEntries(new FormData(form).entries());
      const list = (raw) => raw.split(",").map((v) => v.trim()).filter(Boolean);
      const body = { id: values.id.trim(), url: values.url.trim(), events: list(values.events || "payment.*") };
      if (list(values.channels || "").length) body.channels = list(values.channels);
      act(
        () => api("POST", "/subscribers", body),
        (created) => {
          delete form.dataset.dirty;
          form.reset();
          flash("secret", "Added " + created.id + ". Its signing secret (shown only now): ", h("code", { class: "secret" }, created.secret));
        }
      );
    });
    return form;
  }

  function resendSinceForm(subscribers) {
    const form = h(
      "form",
      { id: "resend-since", class: "stacked", "aria-label": "Send a subscriber's deliveries again" },
      h(
        "div",
        { class: "field" },
        h("label", { for: "resend-subscriber" }, "Subscriber"),
        h("select", { id: "resend-subscriber", name: "subscriber", required: true }, subscribers.map((s) => h("option", { value: s.id }, s.id)))
      ),
      h("div", { class: "field" }, h("label", { for: "resend-since-time" }, "Created since"), h("input", { id: "resend-since-time", name: "since", required: true, placeholder: "ISO time or ms", autocomplete: "off" })),
      h("div", { class: "field actions" }, h("button", { type: "submit" }, "Send again"))
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const values = Object.fromEntries(new FormData(form).entries());
      const since = /^\d+$/.test(values.since.trim()) ? Number(values.since.trim()) : values.since.trim();
      act(
        () => api("POST", "/subscribers/" + enc(values.subscriber) + "/resend", { since }),
        (r) => {
          delete form.dataset.dirty;
          form.reset();
          flash("ok", "Queued " + r.queued + " deliveries to " + values.subscriber + " again (same webhook-ids).");
        }
      );
    });
    return form;
  }

  async function subscribersView() {
    const out = [h("h1", {}, "Subscribers")];
    const [listing, overview] = await Promise.all([api("GET", "/subscribers"), api("GET", "/overview").catch((err) => (isRefusal(err) ? Promise.reject(err) : null))]);
    const health = new Map(((overview && overview.subscribers) || []).map((s) => [s.id, s]));
    out.push(
      table(
        ["Id", "URL", "Events", "State", "Breaker", "In flight / waiting", "Actions"],
        listing.subscribers.map((s) => {
          const hs = health.get(s.id);
          return [
            h("span", { class: "mono" }, s.id),
            h("span", { class: "mono url" }, s.url),
            (s.events || []).join(", ") + (s.channels ? " (channels " + s.channels.join(", ") + ")" : ""),
            h("span", { id: "state-" + s.id }, s.enabled ? badge("enabled") : badge("disabled"), s.disabled_reason ? " " + s.disabled_reason : ""),
            hs ? badge(hs.breaker) : "—",
            hs ? text(hs.inflight) + " / " + text(hs.waiting) : "—",
            subscriberActions(s),
          ];
        })
      ),
      section("Add a subscriber", addSubscriberForm()),
      listing.subscribers.length ? section("Send deliveries again", resendSinceForm(listing.subscribers)) : null
    );
    return out;
  }

  // --- routing, rendering, refreshing -----------------------------------------------------------

  function route() {
    const raw = location.hash.replace(/^#\/?/, "");
    const [path, query] = raw.split("?", 2);
    const parts = path.split("/").map((p) => {
      try {
        return decodeURIComponent(p);
      } catch (_) {
        return p;
      }
    });
    const params = new URLSearchParams(query || "");
    switch (parts[0]) {
      case "events":
        return { nav: "events", render: () => eventsView(params) };
      case "event":
        return { nav: "events", render: () => eventView(parts[1] || "", parts.slice(2).join("/"), params.get("payment_id")) };
      case "payment":
        return { nav: "payment", render: () => paymentView(parts.slice(1).join("/")) };
      case "deliveries":
        return { nav: "deliveries", render: () => deliveriesView(params) };
      case "delivery":
        return { nav: "deliveries", render: () => deliveryView(parts[1] || "", parts.slice(2).join("/")) };
      case "dead-letters":
        return { nav: "dead-letters", render: () => deadLettersView() };
      case "subscribers":
        return { nav: "subscribers", render: () => subscribersView() };
      default:
        return { nav: "overview", render: () => overviewView() };
    }
  }

  function markNav(current) {
    for (const a of document.querySelectorAll("#nav a")) {
      if (a.getAttribute("href") === "#/" + current) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
  }

  // Builds the current view off-screen, then swaps it in, keeping focus and scroll position.
  async function render(navigated) {
    if (!token()) return showSignIn();
    // Each render has a number; a newer one (a navigation while a refresh is loading) wins.
    const generation = ++state.generation;
    state.rendering = true;
    const r = route();
    markNav(r.nav);
    let content;
    try {
      content = await r.render();
    } catch (err) {
      if (generation !== state.generation) return;
      if (isRefusal(err)) {
        state.rendering = false;
        return signOut(refusal(err));
      }
      content = [h("h1", {}, "Error"), errorBox(err)];
    }
    if (generation !== state.generation) return;
    state.rendering = false;
    if (!token()) return; // signed out meanwhile
    const view = $("view");
    // The operator went into a form field while this refresh loaded: skip it.
    if (!navigated && fieldFocused()) return status();
    const active = document.activeElement;
    const focused = active && view.contains(active) ? active.getAttribute("data-key") : null;
    const scroll = window.scrollY;
    const typed = navigated ? [] : typedValues(view);
    const fresh = h("div", { id: "view" }, content);
    view.replaceWith(fresh);
    restoreTyped(fresh, typed);
    state.lastUpdate = new Date();
    status();
    if (navigated) {
      const heading = fresh.querySelector("h1");
      if (heading) {
        heading.setAttribute("tabindex", "-1");
        heading.focus();
      }
    } else {
      if (focused) {
        const again = fresh.querySelector('[data-key="' + CSS.escape(focused) + '"]');
        if (again) again.focus();
      }
      window.scrollTo(0, scroll);
    }
  }

  // What the operator typed into the forms of `view` ([form id, field id, value]), so that a
  // refresh (or an action elsewhere on the page) never erases it.
  function typedValues(view) {
    const typed = [];
    for (const form of view.querySelectorAll("form[data-dirty]")) {
      // getAttribute: form.id would be the form's field named "id" (the add-subscriber form).
      const formId = form.getAttribute("id");
      for (const field of form.querySelectorAll("input[id], select[id]")) typed.push([formId, field.getAttribute("id"), field.value]);
    }
    return typed;
  }

  function restoreTyped(fresh, typed) {
    for (const [formId, fieldId, value] of typed) {
      const form = fresh.querySelector("#" + CSS.escape(formId));
      const field = form && form.querySelector("#" + CSS.escape(fieldId));
      if (!field) continue;
      field.value = value;
      form.dataset.dirty = "1";
    }
  }

  // Whether an automatic refresh would get in the operator's way.
  function editing() {
    return fieldFocused() || !!document.querySelector("#view form[data-dirty]");
  }

  function fieldFocused() {
    const active = document.activeElement;
    return !!(active && active.closest && active.closest("#view form") && ["INPUT", "SELECT", "TEXTAREA"].includes(active.tagName));
  }

  function status(note) {
    const updated = state.lastUpdate ? "Updated " + state.lastUpdate.toISOString().slice(11, 19) + "Z" : "";
    const paused = editing() ? " · auto-refresh paused while you edit" : " · refreshes every " + POLL_MS / 1000 + " s";
    $("refresh-status").textContent = note || updated + paused;
  }

  function tick() {
    if (!token() || state.busy || state.rendering || document.hidden) return;
    if (editing()) return status();
    render(false);
  }

  function showSignIn(message) {
    $("signin").hidden = false;
    $("nav").hidden = true;
    $("session").hidden = true;
    $("view").replaceChildren();
    $("signin-error").textContent = message || "";
    $("token").focus();
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("flash").replaceChildren();
    showSignIn(message);
  }

  function showConsole() {
    $("signin").hidden = true;
    $("nav").hidden = false;
    $("session").hidden = false;
  }

  async function signIn(event) {
    event.preventDefault();
    const candidate = $("token").value.trim();
    $("signin-error").textContent = "";
    if (!candidate) return showSignIn("Enter the admin token.");
    try {
      await api("GET", "/subscribers", undefined, candidate);
    } catch (err) {
      const message = isRefusal(err) ? refusal(err) || err.detail : "Cannot sign in: " + err.message;
      return showSignIn(message);
    }
    sessionStorage.setItem(TOKEN_KEY, candidate);
    $("token").value = "";
    showConsole();
    if (!location.hash) location.hash = "#/overview";
    else render(true);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", () => signOut("Signed out."));
    $("refresh-now").addEventListener("click", () => render(false));
    window.addEventListener("hashchange", () => {
      // Confirmations belong to the view they were made in; secrets and errors stay.
      for (const done of document.querySelectorAll("#flash .message-ok")) done.remove();
      render(true);
    });
    // A form the operator typed into is "dirty": no refresh replaces it until it is sent.
    document.addEventListener("input", (event) => {
      const form = event.target.closest && event.target.closest("#view form");
      if (form) form.dataset.dirty = "1";
      status();
    });
    document.addEventListener("focusin", () => status());
    document.addEventListener("focusout", () => setTimeout(() => status(), 0));
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) tick();
    });
    state.timer = setInterval(tick, POLL_MS);
    if (token()) {
      showConsole();
      render(true);
    } else {
      showSignIn();
    }
  });
})();
