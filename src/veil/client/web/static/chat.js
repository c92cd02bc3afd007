// The chat page: streamed answers, each with its verification panel; history on this machine.
import { ApiError, GatewayDown, call, healthy, setApiKey, streamChat } from "./api.js";
import { deleteAllHistory, deleteConversation, exportHistory, listHistory, saveConversation } from "./history.js";
import { renderMarkdown } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const MPC_SECONDS_PER_TOKEN = 6;  // the design's 3-party figure on a 2-core machine
const MAX_TOKENS = 256;

const state = { conversations: [], current: null, abort: null, busy: false };

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

// A random (version 4) UUID; randomUUID exists only in secure contexts (a gateway reached by
// a non-loopback http address is not one), getRandomValues everywhere.
function uuid4() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function newConversation() {
  return { id: uuid4(), title: "", messages: [] };
}

// -- the banner: gateway down (retrying), or an API key needed
let retryTimer = null;
function showBanner(text, kind = "error") {
  const banner = $("banner");
  banner.textContent = text;
  banner.dataset.kind = kind;
  banner.hidden = false;
}
function hideBanner() { $("banner").hidden = true; }

function gatewayDown() {
  if (retryTimer) return;
  let wait = 1;
  const attempt = async () => {
    showBanner(`The gateway at ${location.host} cannot be reached (down or restarting). ` +
      `Retrying in ${wait} s; your prompt is kept.`);
    retryTimer = setTimeout(async () => {
      if (await healthy()) {
        retryTimer = null;
        showBanner("The gateway is back.", "ok");
        setTimeout(hideBanner, 2000);
        loadModels();
        loadHistory();
        return;
      }
      wait = Math.min(wait * 2, 10);
      attempt();
    }, wait * 1000);
  };
  attempt();
}

function handle(err) {
  if (err instanceof GatewayDown) { gatewayDown(); return; }
  if (err instanceof ApiError && err.code === "invalid_api_key") { $("key-form").hidden = false; return; }
  showBanner(err.message || String(err));
}

// -- models
async function loadModels() {
  try {
    const listing = await call("/v1/models");
    const ids = [...new Set(listing.data.map((m) => m.id.split(":")[0]))].sort();
    const select = $("model");
    const chosen = select.value;
    select.replaceChildren(...ids.map((id) => { const o = el("option", null, id); o.value = id; return o; }));
    if (ids.includes(chosen)) select.value = chosen;
    if (!ids.length) setTimeout(loadModels, 2000);  // nodes still being verified
  } catch (err) { handle(err); }
}

// -- history
async function loadHistory() {
  try {
    const found = await listHistory();
    state.conversations = found.conversations;
    $("history-where").textContent =
      `History is kept only on this machine, in ${found.location}. Nothing is stored on a node.`;
    if (!state.current && state.conversations.length) state.current = state.conversations[0];
  } catch (err) {
    if (err instanceof ApiError && err.code === "history_off") {
      $("history-where").textContent = "This gateway keeps no history: conversations last until you reload.";
    } else { handle(err); }
  }
  if (!state.current) state.current = newConversation();
  renderSidebar();
  renderThread();
}

async function persist(conversation) {
  if (!conversation.title && conversation.messages.length) {
    conversation.title = conversation.messages[0].content.slice(0, 60);
  }
  try { await saveConversation(forHistory(conversation)); } catch (err) {
    if (!(err instanceof ApiError && err.code === "history_off")) handle(err);
  }
  if (!state.conversations.some((c) => c.id === conversation.id)) state.conversations.unshift(conversation);
  renderSidebar();
}

function renderSidebar() {
  const list = $("conversations");
  list.replaceChildren(...state.conversations.map((conv) => {
    const item = el("li", conv === state.current ? "active" : "");
    item.dataset.id = conv.id;
    const open = el("button", "open", conv.title || "(untitled)");
    open.type = "button";
    open.addEventListener("click", () => { if (!state.busy) { state.current = conv; renderSidebar(); renderThread(); } });
    const remove = el("button", "remove", "Delete");
    remove.type = "button";
    remove.setAttribute("aria-label", `Delete ${conv.title}`);
    remove.addEventListener("click", () => removeConversation(conv));
    item.append(open, remove);
    return item;
  }));
}

async function removeConversation(conv) {
  try { await deleteConversation(conv.id); } catch (err) { handle(err); return; }
  state.conversations = state.conversations.filter((c) => c !== conv);
  if (state.current === conv) state.current = newConversation();
  renderSidebar();
  renderThread();
}

// -- the thread
function copyButton(label, text) {
  const button = el("button", "copy", label);
  button.type = "button";
  button.addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(text()); button.textContent = "Copied"; } catch (_) {
      button.textContent = "Copy failed";
    }
    setTimeout(() => { button.textContent = label; }, 1500);
  });
  return button;
}

function row(dl, name, value, copyable = false) {
  if (value === undefined || value === null || value === "") return;
  const dt = el("dt", null, name);
  const dd = el("dd");
  dd.append(el("span", "value", value));
  if (copyable) dd.append(copyButton("Copy", () => value));
  dl.append(dt, dd);
}

function verificationPanel(message) {
  const meta = message.meta || {};
  const panel = el("details", "verification");
  const summary = el("summary");
  let verdict;
  if (meta.incomplete) verdict = "Incomplete answer: not verified";
  else if (meta.error) verdict = "Not answered";
  else if (meta.mode === "mpc") verdict = "MPC answer: no node saw it, so none signed a receipt";
  else if (meta.receipt === "verified") verdict = "Receipt verified";
  else verdict = "Receiving…";
  summary.textContent = verdict;
  panel.dataset.verdict = verdict;
  panel.append(summary);
  const dl = el("dl");
  row(dl, "Node", meta.node, true);
  row(dl, "Parties", meta.nodes, true);
  row(dl, "Mode", meta.mode);
  row(dl, "Attestation", meta.attestation);
  row(dl, "Checks", meta.verification);
  row(dl, "Receipt", meta.receipt);
  row(dl, "Receipt id", meta.receipt_id, true);
  row(dl, "Paid", paidWith(meta), !!(meta.payment || meta.ticket_id));
  row(dl, "Validator score", "no validators on this network yet");
  panel.append(dl);
  return panel;
}

// "ticket 0x…" or "tokens N 0x…" (x-veil-payment: the id the receipt names, checked).
function paidWith(meta) {
  const parts = (meta.payment || "").split(" ");
  if (parts[0] === "tokens") {
    const n = parts[1] === "1" ? "1 anonymous token" : `${parts[1]} anonymous tokens`;
    return `${n}, payment ${parts[2]}`;
  }
  if (parts[0] === "ticket") return `ticket ${parts[1]}`;
  if (meta.ticket_id) return `ticket ${meta.ticket_id}`;
  return meta.node && !meta.error ? "none (no wallet)" : "";
}

function renderMessage(message, index) {
  const box = el("article", `message ${message.role}`);
  box.dataset.index = String(index);
  const body = el("div", "body");
  body.append(renderMarkdown(message.content));
  box.append(body);
  if (message.role === "assistant") {
    const meta = message.meta || {};
    if (meta.incomplete) {
      box.append(el("p", "incomplete", "This answer is incomplete: " + (meta.incomplete_reason || meta.error || "the stream broke")));
    } else if (meta.error) box.append(el("p", "error-text", meta.error));
    if (meta.progress) box.append(el("p", "progress", meta.progress));
    const actions = el("div", "actions");
    actions.append(copyButton("Copy", () => message.content));
    const regen = el("button", "regenerate", "Regenerate");
    regen.type = "button";
    regen.addEventListener("click", () => regenerate(index));
    actions.append(regen);
    box.append(actions, verificationPanel(message));
  }
  return box;
}

function renderThread() {
  const list = $("messages");
  list.replaceChildren(...state.current.messages.map(renderMessage));
  list.scrollTop = list.scrollHeight;
}

function rerenderLast() {
  const list = $("messages");
  const messages = state.current.messages;
  const last = list.lastElementChild;
  const fresh = renderMessage(messages[messages.length - 1], messages.length - 1);
  if (last && last.classList.contains("assistant")) last.replaceWith(fresh); else list.append(fresh);
  list.scrollTop = list.scrollHeight;
}

// -- asking
function setBusy(busy) {
  state.busy = busy;
  $("send").disabled = busy;
  $("stop").hidden = !busy;
}

async function answer(conversation) {
  const mode = $("mode").value;
  const model = $("model").value;
  const history = conversation.messages
    .filter((m) => !(m.meta && (m.meta.error || m.meta.incomplete)))
    .map((m) => ({ role: m.role, content: m.content }));
  const reply = { role: "assistant", content: "", meta: { model } };
  conversation.messages.push(reply);
  rerenderLast();
  const abort = new AbortController();
  state.abort = abort;
  setBusy(true);
  const started = performance.now();
  let tokens = 0;
  const body = { model: `${model}:${mode}`, messages: history, stream: true };
  if (mode === "mpc") {
    body.max_tokens = 32;
    reply.meta.progress = `MPC: preparing the three parties; expect about ${32 * MPC_SECONDS_PER_TOKEN} s for 32 tokens.`;
    rerenderLast();
  }
  let outcome;
  try {
    outcome = await streamChat(body, {
      start: (meta) => { Object.assign(reply.meta, meta); rerenderLast(); },
      token: (text) => {
        tokens += 1;
        reply.content += text;
        if (mode === "mpc") {
          const per = (performance.now() - started) / 1000 / tokens;
          const left = Math.max(0, (body.max_tokens - tokens) * per);
          reply.meta.progress = `MPC: token ${tokens} of at most ${body.max_tokens}, ${per.toFixed(1)} s per token, about ${Math.round(left)} s left.`;
        }
        rerenderLast();
      },
      receipt: () => { reply.meta.receipt_on_final_chunk = true; },
    }, abort.signal);
  } catch (err) {
    conversation.messages.pop();
    if (err instanceof GatewayDown) {
      conversation.messages.pop();  // the question too: it is still in the box
      renderThread();
      setBusy(false);
      gatewayDown();
      return false;
    }
    reply.meta.error = err.name === "AbortError" ? "stopped before the answer began"
      : err instanceof ApiError ? `${err.message} (${err.status}${err.code ? " " + err.code : ""})` : String(err);
    conversation.messages.push(reply);
    outcome = null;
  }
  delete reply.meta.receipt_on_final_chunk;
  if (outcome) {
    delete reply.meta.progress;
    if (outcome.done) {
      if (reply.meta.mode !== "mpc") reply.meta.receipt = "verified";
    } else {
      reply.meta.incomplete = true;
      reply.meta.incomplete_reason = outcome.error;
      reply.meta.receipt = "not verified";
    }
  }
  state.abort = null;
  rerenderLast();
  await persist(conversation);  // saved before the page takes the next prompt
  setBusy(false);
  return true;
}

async function send(event) {
  event.preventDefault();
  if (state.busy) return;
  const box = $("prompt");
  const text = box.value;
  if (!text.trim()) return;
  const conversation = state.current;
  conversation.messages.push({ role: "user", content: text, meta: {} });
  renderThread();
  const sent = await answer(conversation);
  if (sent) box.value = "";
}

async function regenerate(index) {
  if (state.busy) return;
  const conversation = state.current;
  conversation.messages.splice(index);
  renderThread();
  await answer(conversation);
}

// The stored shape (see veil.client.web.history): only the verification fields.
const STORED_META = ["node", "mode", "attestation", "verification", "receipt", "receipt_id",
  "ticket_id", "payment", "incomplete", "error", "model"];
function forHistory(conversation) {
  return {
    id: conversation.id,
    title: conversation.title,
    messages: conversation.messages.map((m) => {
      const meta = {};
      const from = { ...(m.meta || {}) };
      if (from.nodes) from.node = from.nodes;
      if (from.incomplete_reason) from.error = from.incomplete_reason;
      for (const key of STORED_META) if (from[key] !== undefined) meta[key] = from[key];
      return { role: m.role, content: m.content, meta };
    }),
  };
}

async function init() {
  $("composer").addEventListener("submit", send);
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
  });
  $("stop").addEventListener("click", () => { if (state.abort) state.abort.abort(); });
  $("new-chat").addEventListener("click", () => {
    if (state.busy) return;
    state.current = newConversation();
    renderSidebar();
    renderThread();
  });
  $("export").addEventListener("click", () => exportHistory().catch(handle));
  $("delete-all").addEventListener("click", async () => {
    try { await deleteAllHistory(); } catch (err) { handle(err); return; }
    state.conversations = [];
    state.current = newConversation();
    renderSidebar();
    renderThread();
  });
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    setApiKey($("key").value);
    $("key-form").hidden = true;
    loadModels();
    loadHistory();
  });
  await loadModels();
  await loadHistory();
  document.body.dataset.ready = "1";
}

init();
