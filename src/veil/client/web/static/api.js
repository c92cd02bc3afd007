// The gateway's API as the pages use it: same origin only, the API key (when the gateway has
// one) from this tab's session storage, OpenAI-style errors turned into ApiError.

const KEY_SLOT = "veil-api-key";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// The gateway could not be reached at all (down, restarting).
export class GatewayDown extends Error {}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_SLOT, key);
  else sessionStorage.removeItem(KEY_SLOT);
}

function headers(extra) {
  const out = { ...extra };
  const key = sessionStorage.getItem(KEY_SLOT);
  if (key) out.authorization = `Bearer ${key}`;
  return out;
}

async function errorOf(response) {
  let code = null;
  let message = `the gateway answered ${response.status}`;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || null;
      if (typeof body.error.message === "string") message = body.error.message.slice(0, 2000);
    }
  } catch (_) { /* not JSON: keep the status line */ }
  return new ApiError(response.status, code, message);
}

export async function call(path, { method = "GET", body, signal, raw = false } = {}) {
  let response;
  const init = { method, signal, headers: headers(body === undefined ? {} : { "content-type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new GatewayDown("the gateway cannot be reached");
  }
  if (!response.ok) throw await errorOf(response);
  return raw ? response : response.json();
}

// Whether the gateway answers now.
export async function healthy() {
  try {
    const response = await fetch("/healthz", { headers: headers({}) });
    return response.ok;
  } catch (_) {
    return false;
  }
}

const VERIFY_HEADERS = {
  node: "x-veil-node",
  nodes: "x-veil-nodes",
  mode: "x-veil-mode",
  attestation: "x-veil-attestation",
  verification: "x-veil-verification",
  receipt_id: "x-veil-receipt-id",
  ticket_id: "x-veil-ticket-id",
  payment: "x-veil-payment",
  receipt: "x-veil-receipt",
  protocol: "x-veil-mpc-protocol",
};

// Stream one chat answer. `on.start(meta)` gets the verification headers, `on.token(text)`
// each piece, `on.receipt(receipt)` the receipt on the final chunk. Resolves to
// {done: true} after [DONE], or {done: false, error} when the stream ended any other way.
export async function streamChat(body, on, signal) {
  const response = await call("/v1/chat/completions", { method: "POST", body, signal, raw: true });
  const meta = {};
  for (const [name, header] of Object.entries(VERIFY_HEADERS)) {
    const value = response.headers.get(header);
    if (value !== null) meta[name] = value.slice(0, 300);
  }
  on.start(meta);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") return { done: true };
          let chunk;
          try { chunk = JSON.parse(data); } catch (_) {
            return { done: false, error: "the gateway sent an event that is not JSON" };
          }
          if (chunk.error) return { done: false, error: String(chunk.error.message || chunk.error.code) };
          if (chunk.veil_receipt) on.receipt(chunk.veil_receipt);
          for (const choice of chunk.choices || []) {
            const text = choice.delta && choice.delta.content;
            if (typeof text === "string" && text) on.token(text);
          }
        }
      }
    }
  } catch (err) {
    if (err.name === "AbortError") return { done: false, error: "stopped", stopped: true };
    return { done: false, error: "the connection to the gateway broke mid-answer" };
  }
  return { done: false, error: "the answer ended before the gateway confirmed it" };
}
