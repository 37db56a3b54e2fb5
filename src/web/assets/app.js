// stagetime's web page: keeps the server-rendered parts live through the
// JSON API's Server-Sent Events streams (read with fetch, so the bearer
// token travels in a header, never in a URL or cookie), shows logs, and
// sends cancel and rerun. Plain JavaScript, no build step.
"use strict";
(function () {
  const body = document.body;
  const TOKEN_KEY = "stagetime-token";
  const needsToken = body.dataset.auth === "required";
  const readOnly = body.dataset.readOnly === "true";
  const statusLine = document.getElementById("status");

  function say(text) {
    if (statusLine) statusLine.textContent = text;
  }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    const t = sessionStorage.getItem(TOKEN_KEY);
    if (t) h["Authorization"] = "Bearer " + t;
    return h;
  }

  async function problemText(response) {
    try {
      const p = await response.json();
      return (p.field ? p.field + ": " : "") + (p.detail || response.statusText);
    } catch (e) {
      return response.status + " " + response.statusText;
    }
  }

  // Asks for the token (once per tab) and calls start when it is given.
  function login(start) {
    const form = document.getElementById("login");
    form.hidden = false;
    form.onsubmit = function (ev) {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
      form.hidden = true;
      start();
    };
  }

  // Reads a Server-Sent Events stream; onEvent(name, data) per event.
  // Resolves when the stream ends; returns false after an error answer.
  async function stream(url, onEvent, signal) {
    const r = await fetch(url, { headers: headers({ Accept: "text/event-stream" }), signal: signal });
    if (r.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      say("The API token was refused: " + (await problemText(r)));
      login(main);
      return false;
    }
    if (!r.ok) {
      say(await problemText(r));
      return false;
    }
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return true;
      buffer += value.replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) onEvent(name, data.join("\n"));
      }
    }
  }

  // Follows a stream, opening it again after a pause when it ends early
  // (a server restart) until done() says the page has all it needs.
  async function keepFollowing(url, onEvent, done) {
    for (;;) {
      let ok;
      try {
        ok = await stream(url, onEvent);
      } catch (e) {
        ok = true;
      }
      if (!ok || done()) return;
      await new Promise(function (r) { setTimeout(r, 2000); });
    }
  }

  // ---- the runs list ----
  function runsPage() {
    const params = new URLSearchParams(location.search);
    params.set("format", "html");
    const tbody = document.getElementById("runs-body");
    keepFollowing("/api/v1/events/runs?" + params.toString(), function (name, data) {
      if (name === "runs") {
        tbody.innerHTML = data;
        say("");
      }
    }, function () { return false; });
  }

  // ---- a run ----
  const run = body.dataset.run;
  let selected = body.dataset.task || null;
  let logAbort = null;
  let logKey = null;

  function summary() {
    return document.querySelector("#live .summary");
  }

  function taskRow(name) {
    for (const row of document.querySelectorAll("#tasks tbody tr")) {
      if (row.dataset.task === name) return row;
    }
    return null;
  }

  function defaultTask() {
    const rows = Array.from(document.querySelectorAll("#tasks tbody tr"));
    const pick = rows.find(function (r) { return r.dataset.status === "running"; }) ||
      rows.find(function (r) { return ["failed", "timed_out"].includes(r.dataset.status); }) ||
      rows.find(function (r) { return r.dataset.attempt !== "0"; });
    return pick ? pick.dataset.task : null;
  }

  function updateButtons() {
    const s = summary();
    if (!s || readOnly) return;
    const finished = s.dataset.finished === "true";
    document.getElementById("cancel").disabled = finished;
    document.getElementById("rerun").disabled = !finished;
  }

  // Shows the log of the selected task: followed while it runs, read
  // whole once it is over. Reopened when its status or attempt changes.
  function showLog() {
    const name = selected || defaultTask();
    const row = name && taskRow(name);
    document.getElementById("log-task").textContent = name ? "of " + name : "";
    for (const r of document.querySelectorAll("#tasks tbody tr")) {
      r.classList.toggle("selected", r.dataset.task === name);
    }
    if (!row) return;
    const running = !["succeeded", "failed", "timed_out", "cancelled", "skipped"].includes(row.dataset.status);
    const key = name + "/" + row.dataset.attempt + "/" + running;
    if (key === logKey) return;
    if (row.dataset.attempt === "0") {
      document.getElementById("log-state").textContent = "Not started yet.";
      return;
    }
    logKey = key;
    if (logAbort) logAbort.abort();
    logAbort = new AbortController();
    const signal = logAbort.signal;
    const pre = document.getElementById("log-text");
    const state = document.getElementById("log-state");
    const url = "/api/v1/runs/" + encodeURIComponent(run) + "/logs?task=" + encodeURIComponent(name) +
      "&attempt=" + row.dataset.attempt;
    if (running) {
      pre.textContent = "";
      state.textContent = "Following attempt " + row.dataset.attempt + "…";
      stream(url + "&follow=true", function (ev, data) {
        if (ev === "chunk") {
          pre.textContent += JSON.parse(data).text;
        } else if (ev === "end") {
          state.textContent = "Attempt " + row.dataset.attempt + " ended.";
        } else if (ev === "error") {
          state.textContent = "Log: " + JSON.parse(data).detail;
        }
      }, signal).catch(function () {});
    } else {
      state.textContent = "Loading…";
      fetch(url, { headers: headers(), signal: signal }).then(async function (r) {
        if (!r.ok) {
          state.textContent = "Log: " + (await problemText(r));
          return;
        }
        const doc = await r.json();
        pre.textContent = doc.chunks.map(function (c) { return c.text; }).join("");
        state.textContent = "Attempt " + row.dataset.attempt + " (finished)" + (doc.truncated ? ", cut at 4 MiB" : "") + ".";
      }).catch(function () {});
    }
  }

  async function post(action, payload) {
    const r = await fetch("/api/v1/runs/" + encodeURIComponent(run) + "/" + action, {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(payload),
    });
    if (r.ok) {
      say(action === "cancel" ? "Cancel requested." : "Rerun requested.");
      if (action === "rerun") follow();
    } else {
      say(action + " refused: " + (await problemText(r)));
    }
  }

  function follow() {
    let finished = false;
    keepFollowing("/api/v1/runs/" + encodeURIComponent(run) + "/events?format=html", function (name, data) {
      if (name === "run") {
        document.getElementById("live").innerHTML = data;
        const s = summary();
        finished = s && s.dataset.finished === "true";
        updateButtons();
        showLog();
      } else if (name === "error") {
        say(JSON.parse(data).detail);
      }
    }, function () { return finished; });
  }

  let wired = false;
  function runPage() {
    if (wired) {
      follow();
      return;
    }
    wired = true;
    document.getElementById("live").addEventListener("click", function (ev) {
      const button = ev.target.closest("button.show-log");
      if (!button) return;
      selected = button.dataset.task;
      showLog();
      document.getElementById("log-pane").scrollIntoView();
    });
    if (!readOnly) {
      document.getElementById("cancel").addEventListener("click", function () {
        if (confirm("Cancel run " + run + "?")) post("cancel", {});
      });
      document.getElementById("rerun").addEventListener("click", function () {
        const s = summary();
        post("rerun", { expected_version: s ? Number(s.dataset.version) : null });
      });
    }
    updateButtons();
    showLog();
    follow();
  }

  function main() {
    if (needsToken && !sessionStorage.getItem(TOKEN_KEY)) {
      login(main);
      return;
    }
    if (body.dataset.page === "runs") runsPage();
    else if (body.dataset.page === "run") runPage();
  }

  main();
})();
