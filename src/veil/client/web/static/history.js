// Conversations, kept by the gateway in one SQLite file on this machine (never on a node).
import { call } from "./api.js";

export const listHistory = () => call("/veil/history");
export const saveConversation = (conversation) =>
  call("/veil/history", { method: "POST", body: conversation });
export const deleteConversation = (id) =>
  call(`/veil/history/${encodeURIComponent(id)}`, { method: "DELETE" });
export const deleteAllHistory = () => call("/veil/history", { method: "DELETE" });

// Download every conversation as one JSON file.
export async function exportHistory() {
  const response = await call("/veil/history/export", { raw: true });
  const blob = await response.blob();
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = "veil-chat-history.json";
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}
