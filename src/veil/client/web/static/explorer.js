// The explorer: the registry, release log, deposits and redeemed tickets, read through the
// gateway (`/veil/explorer`) every few seconds. Every address and hash has a copy button.
import { GatewayDown, call } from "./api.js";

const REFRESH_MS = 5000;
const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Base units (a decimal string) as VEIL with up to 4 decimals.
function veil(units) {
  if (units === null || units === undefined) return "—";
  try {
    const value = BigInt(units);
    const whole = value / 10n ** 18n;
    const frac = (value % 10n ** 18n).toString().padStart(18, "0").slice(0, 4).replace(/0+$/, "");
    return frac ? `${whole}.${frac}` : `${whole}`;
  } catch (_) { return "?"; }
}

function copyable(value) {
  const cell = el("td", "hash");
  if (!value) { cell.textContent = "—"; return cell; }
  const text = el("span", "value", value);
  text.title = value;
  const button = el("button", "copy", "Copy");
  button.type = "button";
  button.dataset.copy = value;
  button.addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(value); button.textContent = "Copied"; } catch (_) {
      button.textContent = "Copy failed";
    }
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  });
  cell.append(text, button);
  return cell;
}

const cell = (text) => el("td", null, text === undefined || text === null ? "—" : String(text));

function fill(id, rows, build) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren(...rows.map((row) => { const tr = el("tr"); tr.append(...build(row)); return tr; }));
  if (!rows.length) {
    const tr = el("tr");
    const td = el("td", "note", "none yet");
    td.colSpan = $(id).querySelectorAll("th").length;
    tr.append(td);
    body.append(tr);
  }
}

function attestation(node) {
  const seen = Object.entries(node.modes || {}).find(([, v]) => v.verified);
  if (!seen) {
    const why = Object.values(node.modes || {}).map((v) => v.reason).find(Boolean);
    return `not verified${why ? ": " + why : ""}`;
  }
  return `${seen[1].attestation} (${seen[1].isolation})`;
}

function health(node) {
  if (!node.active) return "inactive";
  if (node.down_for_s) return `down (${Math.round(node.down_for_s)} s)`;
  const ttfb = node.ttfb_ms === null || node.ttfb_ms === undefined ? "" : `, first byte ${node.ttfb_ms} ms`;
  return `up (${node.in_flight || 0} in flight${ttfb})`;
}

async function refresh() {
  try {
    const data = await call("/veil/explorer");
    fill("nodes", data.nodes, (n) => [
      copyable(n.address), cell(n.endpoint),
      cell(n.models.map((m) => m.id).join(", ")), cell(veil(n.stake)), cell(attestation(n)),
      cell(n.mpc_party ? `${n.mpc_party.protocol} party for ${n.mpc_party.model}` : "no"),
      cell(health(n)), cell(veil(n.earnings)),
    ]);
    fill("releases", data.releases, (r) => [
      cell(r.index), cell(r.action), copyable(r.model_hash), copyable(r.measurement), cell(r.note),
      cell(r.in_force ? "yes" : "no"),
    ]);
    fill("deposits", data.deposits, (d) => [copyable(d.payer), cell(veil(d.deposit)), cell(veil(d.reserve))]);
    fill("redeemed", data.redeemed, (t) => [
      cell(t.block), copyable(t.sender), copyable(t.recipient), cell(veil(t.face_value)),
      copyable(t.ticket_hash), copyable(t.tx_hash),
    ]);
    const problems = Object.entries(data.errors || {}).map(([k, v]) => `${k}: ${v}`);
    if (problems.length) { $("banner").textContent = `Some reads failed: ${problems.join("; ")}`; $("banner").hidden = false; }
    else $("banner").hidden = true;
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}; refreshes every ${REFRESH_MS / 1000} s`;
    document.body.dataset.ready = "1";
  } catch (err) {
    $("banner").textContent = err instanceof GatewayDown
      ? `The gateway at ${location.host} cannot be reached; retrying.` : err.message;
    $("banner").hidden = false;
  }
  setTimeout(refresh, REFRESH_MS);
}

refresh();
