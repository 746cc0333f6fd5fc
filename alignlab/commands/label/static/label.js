// alignlab label: rank one prompt's responses at a time. The server owns all state that matters (what is
// saved, what comes next); this page holds only the ranking being built. Text from the data is always set
// with textContent, never as HTML: model outputs may contain markup.
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token");
let annotator = params.get("annotator");
let view = null; // the server's answer: progress and the current item
let order = []; // the ranking being built, best first: [{card, tie}], tie = same rank as the entry above
let shownAt = 0;
let busy = false;

const $ = (id) => document.getElementById(id);

async function call(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers["X-Alignlab-Token"] = token;
  const init = body === undefined ? { headers } : { method: "POST", headers, body: JSON.stringify(body) };
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(typeof data.detail === "string" ? data.detail : `${response.status}: ${JSON.stringify(data.detail)}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function say(text) {
  $("message").textContent = text || "";
}

async function act(path, body) {
  if (busy) return; // one request at a time: a second Enter must not save twice
  busy = true;
  say("");
  try {
    show(await call(path, body));
  } catch (error) {
    say(error.message);
    if (!view) $("start").hidden = false; // e.g. a name the server refused: ask again
    if (error.status === 409) show(await call(`/api/next?annotator=${encodeURIComponent(annotator)}`));
  } finally {
    busy = false;
  }
}

function renderPrompt(prompt) {
  const box = $("prompt");
  box.replaceChildren();
  if (typeof prompt === "string") {
    box.textContent = prompt;
    return;
  }
  for (const message of prompt) {
    const line = document.createElement("div");
    const role = document.createElement("b");
    role.textContent = `${message.role}: `;
    line.append(role, typeof message.content === "string" ? message.content : JSON.stringify(message.content));
    box.append(line);
  }
}

function show(data) {
  view = data;
  const p = data.progress;
  const done = p.ranked + p.skipped;
  $("bar").max = p.total;
  $("bar").value = done;
  $("progress").textContent = `${done} of ${p.total} done (${p.ranked} ranked, ${p.skipped} skipped)`;
  $("who").textContent = annotator;
  $("start").hidden = true;
  const item = data.item;
  $("work").hidden = !item;
  $("finished").hidden = !!item;
  if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();
  if (!item) {
    $("summary").textContent = `You ranked ${p.ranked} and skipped ${p.skipped} of ${p.total} prompts. ` +
      `Your labels are in ${data.out}.`;
    return;
  }
  $("row").textContent = `(row ${item.row}, ${item.cards.length} different responses)`;
  renderPrompt(item.prompt);
  order = [];
  if (item.previous) { // an undone label: start from the ranking it had
    const cardOf = {};
    item.cards.forEach((card, c) => card.indices.forEach((i) => { cardOf[i] = c; }));
    for (const tier of item.previous) {
      const cards = [...new Set(tier.map((i) => cardOf[i]))];
      cards.forEach((card, j) => order.push({ card, tie: j > 0 }));
    }
  }
  shownAt = performance.now();
  render();
}

function ranks() { // competition ranks ("1 1 3"), counting every response a card stands for
  const out = [];
  let placed = 0;
  order.forEach((entry, i) => {
    out.push(entry.tie && i > 0 ? out[i - 1] : placed + 1);
    placed += view.item.cards[entry.card].indices.length;
  });
  return out;
}

function cardElement(c) {
  const card = view.item.cards[c];
  const li = document.createElement("li");
  li.className = "card";
  li.draggable = true;
  li.dataset.card = c;
  const key = document.createElement("span");
  key.className = "key";
  key.textContent = c + 1;
  const text = document.createElement("div");
  text.className = "text";
  text.textContent = card.text;
  li.append(key, text);
  if (card.indices.length > 1) {
    const copies = document.createElement("span");
    copies.className = "copies";
    copies.textContent = `\u00d7${card.indices.length} identical`;
    li.append(copies);
  }
  li.addEventListener("dragstart", (e) => e.dataTransfer.setData("text/plain", String(c)));
  return li;
}

function button(text, title, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.title = title;
  b.addEventListener("click", (e) => { e.stopPropagation(); onClick(); });
  return b;
}

function render() {
  const item = view.item;
  const placed = new Set(order.map((entry) => entry.card));
  const pool = $("pool");
  pool.replaceChildren();
  item.cards.forEach((_, c) => {
    if (placed.has(c)) return;
    const li = cardElement(c);
    li.addEventListener("click", () => pick(c, false));
    pool.append(li);
  });
  const ranking = $("ranking");
  ranking.replaceChildren();
  const r = ranks();
  order.forEach((entry, i) => {
    const li = cardElement(entry.card);
    li.classList.toggle("tied", entry.tie && i > 0);
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = `#${r[i]}`;
    li.prepend(rank);
    if (i > 0) {
      const tie = button(entry.tie ? "tied" : "=", "tie with the response above (=)", () => { entry.tie = !entry.tie; render(); });
      tie.className = "tie";
      tie.setAttribute("aria-pressed", String(entry.tie));
      li.append(tie);
    }
    li.append(button("\u00d7", "take back to the responses", () => { order.splice(i, 1); render(); }));
    ranking.append(li);
  });
  const left = item.cards.length - order.length;
  $("save").disabled = left > 0;
  $("save").title = left > 0 ? `rank ${left} more` : "save this ranking";
}

function pick(c, tie) {
  if (!view || !view.item || c >= view.item.cards.length) return;
  const at = order.findIndex((entry) => entry.card === c);
  if (at >= 0) {
    say(`response ${c + 1} is already ranked; Backspace takes back the last one`);
    return;
  }
  say("");
  order.push({ card: c, tie: tie && order.length > 0 });
  render();
}

function dropInto(c, before) { // move card c to the ranking, before position `before` (-1: at the end)
  const from = order.findIndex((entry) => entry.card === c);
  let at = before < 0 ? order.length : before;
  if (from >= 0) {
    order.splice(from, 1);
    if (from < at) at -= 1;
  }
  order.splice(at, 0, { card: c, tie: false });
  if (order.length) order[0].tie = false;
  render();
}

function tiers() {
  const out = [];
  for (const entry of order) {
    const indices = view.item.cards[entry.card].indices;
    if (entry.tie && out.length) out[out.length - 1].push(...indices);
    else out.push([...indices]);
  }
  return out;
}

function seconds() {
  return (performance.now() - shownAt) / 1000;
}

function save() {
  if (!view || !view.item) return;
  const left = view.item.cards.length - order.length;
  if (left > 0) {
    say(`rank all responses before saving (${left} left)`);
    return;
  }
  act("/api/label", { annotator, row: view.item.row, tiers: tiers(), seconds: seconds() });
}

function skip() {
  if (view && view.item) act("/api/label", { annotator, row: view.item.row, tiers: null, seconds: seconds() });
}

function undo() {
  if (view) act("/api/undo", { annotator });
}

function onKey(e) {
  if (!view || e.ctrlKey || e.metaKey || e.altKey || e.target.closest("input, textarea")) return;
  if (["Enter", " "].includes(e.key) && e.target.closest("button")) return; // the focused button handles it
  const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  const digit = /^Digit([1-9])$/.exec(e.code);
  if (key === "u") undo();
  else if (!view.item) return;
  else if (/^[1-9]$/.test(key)) pick(Number(key) - 1, false);
  else if (digit && e.shiftKey) pick(Number(digit[1]) - 1, true);
  else if (key === "=" || key === "t") {
    if (order.length > 1) {
      order[order.length - 1].tie = !order[order.length - 1].tie;
      render();
    }
  } else if (key === "Backspace") {
    order.pop();
    render();
  } else if (key === "Enter") save();
  else if (key === "s") skip();
  else return;
  e.preventDefault();
}

function setUpDragging() {
  const ranking = $("ranking");
  const pool = $("pool");
  for (const zone of [ranking, pool]) {
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  }
  ranking.addEventListener("drop", (e) => {
    e.preventDefault();
    ranking.classList.remove("over");
    const c = Number(e.dataTransfer.getData("text/plain"));
    const target = e.target.closest("#ranking .card");
    const before = target ? order.findIndex((entry) => entry.card === Number(target.dataset.card)) : -1;
    if (!target || Number(target.dataset.card) !== c) dropInto(c, before);
  });
  pool.addEventListener("drop", (e) => {
    e.preventDefault();
    pool.classList.remove("over");
    const c = Number(e.dataTransfer.getData("text/plain"));
    order = order.filter((entry) => entry.card !== c);
    if (order.length) order[0].tie = false;
    render();
  });
}

function start() {
  $("save").addEventListener("click", save);
  $("skip").addEventListener("click", skip);
  $("undo").addEventListener("click", undo);
  $("undo-done").addEventListener("click", undo);
  document.addEventListener("keydown", onKey);
  setUpDragging();
  $("start").addEventListener("submit", (e) => {
    e.preventDefault();
    annotator = $("name").value.trim();
    params.set("annotator", annotator);
    history.replaceState(null, "", `?${params}`);
    act(`/api/next?annotator=${encodeURIComponent(annotator)}`);
  });
  if (annotator) act(`/api/next?annotator=${encodeURIComponent(annotator)}`);
  else {
    $("start").hidden = false;
    $("name").focus();
  }
}

start();
