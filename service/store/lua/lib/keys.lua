-- Key and job-id functions, generated when a script is loaded from the formats of
-- service/store/layout.py (LUA_KEY_FUNCTIONS): arq_job_key(job_id), deliver_job_id(sub, tid,
-- gen), wake_job_id(sub, at), dead_member(sub, tid), delivery_key(sub, tid), order_key(sub, payment_id), head_key(sub, payment_id),
-- waiting_key(sub), inflight_key(sub), breaker_key(sub), payment_state_key(payment_id),
-- converge_job_id(payment_id, first, step).
-- Only for keys a script discovers itself (docs/decisions/lua-keys.md); every key the caller
-- can name arrives in KEYS.
{{KEY_FUNCTIONS}}
