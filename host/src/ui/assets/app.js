// Weir's web UI: the little the server-rendered pages need a script for.
// Times in the viewer's zone, live logs over Server-Sent Events with a level
// filter, a live run page, and checking the Run form before it is sent.
// Every text from the server is set with textContent, never as HTML.

const LEVELS = ["trace", "debug", "info", "warn", "error"];

function localTimes(root) {
  for (const el of root.querySelectorAll("time[datetime]")) {
    const at = new Date(el.dateTime);
    if (!Number.isNaN(at.getTime())) {
      el.title = el.dateTime;
      el.textContent = at.toLocaleString();
    }
  }
}

// Replaces the live parts of the run page with a fresh copy of the page.
async function refreshRun() {
  const reply = await fetch(location.href, { credentials: "same-origin" });
  if (!reply.ok) return;
  const fresh = new DOMParser().parseFromString(await reply.text(), "text/html");
  for (const id of ["run-live", "run-state"]) {
    const now = document.getElementById(id);
    const next = fresh.getElementById(id);
    if (now && next) now.replaceWith(next);
  }
  const actions = document.querySelector(".actions");
  const nextActions = fresh.querySelector(".actions");
  if (actions && nextActions) actions.replaceWith(nextActions);
  // Sends the chosen .wasm as the raw body, then opens the component's page.
function uploadComponent(form) {
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const file = form.querySelector("input[type=file]").files[0];
    const error = document.getElementById("upload-error");
    if (!file) { error.textContent = "choose a .wasm file"; return; }
    error.textContent = "uploading and compiling…";
    const reply = await fetch("/components", {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/wasm", "x-csrf-token": form.dataset.csrf },
      body: file,
    });
    if (reply.ok) {
      const { digest } = await reply.json();
      location.assign("/components/" + digest);
    } else {
      const page = new DOMParser().parseFromString(await reply.text(), "text/html");
      error.textContent = page.querySelector("[role=alert]")?.textContent || "the upload failed (" + reply.status + ")";
    }
  });
}

localTimes(document);
const upload = document.getElementById("upload");
if (upload) uploadComponent(upload);
}

function followRun(logs) {
  const select = document.getElementById("log-level");
  const minLevel = () => Number(select ? select.value : 0);
  const show = (line) => { line.hidden = Number(line.dataset.level) < minLevel(); };
  if (select) select.addEventListener("change", () => logs.querySelectorAll(".line").forEach(show));

  const events = new EventSource(logs.dataset.events);
  let refreshing = null;
  const refreshSoon = () => {
    if (!refreshing) refreshing = setTimeout(() => { refreshing = null; refreshRun(); }, 300);
  };
  // After a dropped connection the browser reconnects and the stream starts
  // over: lines already shown are skipped by their id.
  let lastId = 0;
  events.addEventListener("log", (e) => {
    const entry = JSON.parse(e.data);
    if (entry.id <= lastId) return;
    lastId = entry.id;
    const line = document.createElement("div");
    const level = LEVELS.indexOf(entry.level);
    line.className = "line lvl-" + entry.level;
    line.dataset.level = String(level < 0 ? 2 : level);
    const at = new Date(entry.at / 1000);
    const task = entry.task_name ? " [" + entry.task_name + "]" : "";
    line.textContent = at.toLocaleTimeString() + " " + entry.level.toUpperCase().padEnd(5) + task + " " + entry.message;
    show(line);
    const atBottom = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
    logs.append(line);
    if (atBottom) logs.scrollTop = logs.scrollHeight;
  });
  events.addEventListener("state", refreshSoon);
  events.addEventListener("end", () => {
    events.close();
    logs.dataset.ended = "true";
    refreshRun();
  });
  // While the run goes on, its task timeline grows: look again now and then.
  const timer = setInterval(() => {
    if (logs.dataset.ended === "true") clearInterval(timer);
    else refreshRun();
  }, 2000);
}

// The problems of one field of the Run form, or "".
function problem(field) {
  const text = field.value.trim();
  const type = field.dataset.type;
  if (text === "") return "required" in field.dataset ? "required" : "";
  if (type === "integer" && !/^-?\d+$/.test(text)) return "must be a whole number";
  if (type === "number" && !Number.isFinite(Number(text))) return "must be a number";
  if (type === "integer" || type === "number") {
    const n = Number(text);
    if (field.dataset.min !== undefined && n < Number(field.dataset.min)) return "must be at least " + field.dataset.min;
    if (field.dataset.max !== undefined && n > Number(field.dataset.max)) return "must be at most " + field.dataset.max;
  }
  if (type === "string") {
    if (field.dataset.minlength !== undefined && text.length < Number(field.dataset.minlength)) return "needs at least " + field.dataset.minlength + " characters";
    if (field.dataset.maxlength !== undefined && text.length > Number(field.dataset.maxlength)) return "takes at most " + field.dataset.maxlength + " characters";
    if (field.dataset.pattern !== undefined) {
      try { if (!new RegExp(field.dataset.pattern, "u").test(text)) return "must match " + field.dataset.pattern; } catch { /* the server checks */ }
    }
  }
  if (type === "json") {
    try { JSON.parse(text); } catch { return "is not JSON"; }
  }
  return "";
}

function checkBeforeSubmit(form) {
  form.addEventListener("submit", (e) => {
    let first = null;
    for (const field of form.querySelectorAll("[data-type]")) {
      const message = problem(field);
      const slot = field.closest("label")?.nextElementSibling;
      if (slot && slot.classList.contains("field-error")) slot.textContent = message ? field.name.replace(/^param\./, "") + " " + message : "";
      field.setAttribute("aria-invalid", message ? "true" : "false");
      if (message && !first) first = field;
    }
    if (first) {
      e.preventDefault();
      first.focus();
    }
  });
}

// Sends the chosen .wasm as the raw body, then opens the component's page.
function uploadComponent(form) {
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const file = form.querySelector("input[type=file]").files[0];
    const error = document.getElementById("upload-error");
    if (!file) { error.textContent = "choose a .wasm file"; return; }
    error.textContent = "uploading and compiling…";
    const reply = await fetch("/components", {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/wasm", "x-csrf-token": form.dataset.csrf },
      body: file,
    });
    if (reply.ok) {
      const { digest } = await reply.json();
      location.assign("/components/" + digest);
    } else {
      const page = new DOMParser().parseFromString(await reply.text(), "text/html");
      error.textContent = page.querySelector("[role=alert]")?.textContent || "the upload failed (" + reply.status + ")";
    }
  });
}

localTimes(document);
const upload = document.getElementById("upload");
if (upload) uploadComponent(upload);
const logs = document.getElementById("logs");
if (logs && logs.dataset.events) followRun(logs);
for (const form of document.querySelectorAll("form[data-validate]")) checkBeforeSubmit(form);
