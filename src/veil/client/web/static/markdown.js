// A small Markdown subset rendered as DOM nodes: fenced code blocks, inline code, emphasis,
// lists and paragraphs. Model output only ever becomes text nodes (textContent), never HTML.

const FENCE = /^```/;
const BULLET = /^\s*[-*+]\s+/;
const NUMBERED = /^\s*\d+[.)]\s+/;
const INLINE = /(`[^`\n]+`|\*\*[^*\n]+\*\*|__[^_\n]+__|\*[^*\s][^*\n]*\*|_[^_\s][^_\n]*_)/;

function el(tag, cls) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  return node;
}

// Text with `code`, **strong** and *emphasis*, appended to `parent` as elements and text nodes.
export function appendInline(parent, text) {
  for (const part of text.split(INLINE)) {
    if (!part) continue;
    let node;
    if (part.length > 2 && part.startsWith("`") && part.endsWith("`")) {
      node = el("code");
      node.textContent = part.slice(1, -1);
    } else if (part.length > 4 && (part.startsWith("**") || part.startsWith("__"))
               && part.endsWith(part.slice(0, 2))) {
      node = el("strong");
      node.textContent = part.slice(2, -2);
    } else if (part.length > 2 && (part[0] === "*" || part[0] === "_") && part.endsWith(part[0])) {
      node = el("em");
      node.textContent = part.slice(1, -1);
    } else {
      node = document.createTextNode(part);
    }
    parent.appendChild(node);
  }
}

// The rendered fragment of `text` (an unterminated code fence, as while streaming, still
// renders as code).
export function renderMarkdown(text) {
  const out = document.createDocumentFragment();
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  let paragraph = [];
  const flush = () => {
    if (paragraph.length) {
      const p = el("p");
      appendInline(p, paragraph.join("\n"));
      out.appendChild(p);
      paragraph = [];
    }
  };
  while (i < lines.length) {
    const line = lines[i];
    if (FENCE.test(line.trim())) {
      flush();
      const lang = line.trim().slice(3).trim();
      const body = [];
      i += 1;
      while (i < lines.length && !FENCE.test(lines[i].trim())) body.push(lines[i++]);
      i += 1;  // the closing fence, when there is one
      const pre = el("pre", "code-block");
      const code = el("code");
      if (lang) code.dataset.lang = lang.slice(0, 40);
      code.textContent = body.join("\n");
      pre.appendChild(code);
      out.appendChild(pre);
      continue;
    }
    const listKind = BULLET.test(line) ? "ul" : NUMBERED.test(line) ? "ol" : null;
    if (listKind) {
      flush();
      const list = el(listKind);
      const marker = listKind === "ul" ? BULLET : NUMBERED;
      while (i < lines.length && marker.test(lines[i])) {
        const li = el("li");
        appendInline(li, lines[i].replace(marker, ""));
        list.appendChild(li);
        i += 1;
      }
      out.appendChild(list);
      continue;
    }
    if (!line.trim()) flush();
    else paragraph.push(line);
    i += 1;
  }
  flush();
  return out;
}
