/*
 * fasthub demo page logic (loaded after fasthub.js).
 *
 * XSS rule: everything that comes from the network is rendered with textContent /
 * createTextNode only. Never use innerHTML, insertAdjacentHTML, outerHTML or document.write here.
 */
(function () {
  "use strict";

  var MAX_LOG = 500;
  var STATS_EVERY_MS = 2000;

  // ---- URLs ---------------------------------------------------------------------------------
  // The server replaces {{FASTHUB_ROOT}} in the page with the (HTML-escaped) ASGI root_path,
  // e.g. "" or "/rt". When the page is opened unprocessed, fall back to "".
  function hubRoot() {
    var meta = document.querySelector('meta[name="fasthub-root"]');
    var root = meta ? meta.getAttribute("content") || "" : "";
    if (root.indexOf("{{") !== -1) root = "";
    return root.replace(/\/+$/, "");
  }

  var ROOT = hubRoot();
  var WS_URL = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + ROOT + "/ws";
  var STATS_URL = ROOT + "/ws/stats";

  // ---- DOM helpers (text only) -------------------------------------------------------------
  function $(id) {
    return document.getElementById(id);
  }

  /** el("span", "class names", "text", [children]) - text is set with textContent. */
  function el(tag, className, text, children) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (children) {
      children.forEach(function (c) {
        if (c) node.appendChild(c);
      });
    }
    return node;
  }

  function setText(id, text) {
    $(id).textContent = text === undefined || text === null ? "" : String(text);
  }

  function pad(n, w) {
    var s = String(n);
    while (s.length < (w || 2)) s = "0" + s;
    return s;
  }

  function clock(d) {
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." + pad(d.getMilliseconds(), 3);
  }

  function formatTimestamp(ts) {
    if (ts === undefined || ts === null || ts === "") return { text: clock(new Date()), local: true };
    var d = new Date(typeof ts === "number" && ts < 1e12 ? ts * 1000 : ts);
    if (isNaN(d.getTime())) return { text: String(ts), local: false };
    return { text: clock(d), local: false, title: String(ts) };
  }

  function formatUptime(s) {
    s = Math.max(0, Math.floor(Number(s) || 0));
    var d = Math.floor(s / 86400);
    var h = Math.floor((s % 86400) / 3600);
    var m = Math.floor((s % 3600) / 60);
    var sec = s % 60;
    if (d) return d + "d " + pad(h) + "h " + pad(m) + "m";
    if (h) return h + "h " + pad(m) + "m " + pad(sec) + "s";
    if (m) return m + "m " + pad(sec) + "s";
    return sec + "s";
  }

  function formatCount(n) {
    return typeof n === "number" && isFinite(n) ? n.toLocaleString("en-US") : n === undefined ? "–" : String(n);
  }

  function safeJson(value) {
    try {
      var s = JSON.stringify(value);
      return s === undefined ? String(value) : s;
    } catch (err) {
      return String(value);
    }
  }

  /** Text box contents -> payload: a JSON object/array if it parses as one, else {text: "..."}. */
  function payloadFrom(input) {
    var raw = input.value;
    var trimmed = raw.trim();
    if (trimmed.charAt(0) === "{" || trimmed.charAt(0) === "[") {
      try {
        return JSON.parse(trimmed);
      } catch (err) {
        /* not JSON: send it as text */
      }
    }
    return { text: raw };
  }

  // ---- log ----------------------------------------------------------------------------------
  var logList = $("log");
  var logCount = 0;

  function field(label, value, cls) {
    return el("span", "field" + (cls ? " " + cls : ""), null, [el("span", "label", label), el("span", "value", value)]);
  }

  /** Append one received envelope to the log (newest first). */
  function logEnvelope(env) {
    var type = typeof env.type === "string" ? env.type : "(no type)";
    var payload = env.payload && typeof env.payload === "object" ? env.payload : null;
    var kind = "kind-" + (/^[a-z_]+$/.test(type) ? type : "other");
    var item = el("li", "entry " + kind);
    item.setAttribute("data-type", type);

    var ts = formatTimestamp(env.timestamp);
    var time = el("time", "ts" + (ts.local ? " local" : ""), ts.text);
    if (ts.title) time.title = ts.title;
    else if (ts.local) time.title = "no server timestamp; local receive time";

    var head = el("div", "head", null, [time, el("span", "badge", type)]);
    if (type === "system" && payload && payload.event !== undefined) head.appendChild(el("span", "event", payload.event));
    if (env.room !== undefined) head.appendChild(field("room", env.room));
    if (env.from !== undefined) head.appendChild(field("from", env.from));
    if (env.to !== undefined) head.appendChild(field("to", env.to));
    item.appendChild(head);

    if (type === "error" && payload) {
      item.appendChild(
        el("div", "error-line", null, [
          el("strong", "code", payload.code !== undefined ? payload.code : "error"),
          document.createTextNode(" " + (payload.message !== undefined ? String(payload.message) : "")),
        ])
      );
    }
    if (env.payload !== undefined) item.appendChild(el("pre", "payload", safeJson(env.payload)));
    appendLog(item);
  }

  /** A line about the page itself (connecting, closed, a send that failed...). */
  function logLocal(text, level) {
    var item = el("li", "entry local-entry" + (level ? " " + level : ""));
    item.setAttribute("data-type", "local");
    item.appendChild(el("div", "head", null, [el("time", "ts local", clock(new Date())), el("span", "note", text)]));
    appendLog(item);
  }

  function appendLog(item) {
    logList.insertBefore(item, logList.firstChild);
    while (logList.childNodes.length > MAX_LOG) logList.removeChild(logList.lastChild);
    logCount += 1;
    setText("log-count", logCount + (logCount === 1 ? " entry" : " entries"));
    $("log-empty").hidden = true;
  }

  $("clear-log").addEventListener("click", function () {
    while (logList.firstChild) logList.removeChild(logList.firstChild);
    logCount = 0;
    setText("log-count", "0 entries");
    $("log-empty").hidden = false;
  });

  // ---- client -------------------------------------------------------------------------------
  var client = new FastHubClient(WS_URL, { reconnect: true });
  var joined = new Map(); // room -> member count (null = unknown / rejoining)
  var wantOpen = false;

  setText("ws-url", WS_URL);

  function setStatus(state, text) {
    var status = $("status");
    status.className = "status " + state;
    status.setAttribute("data-state", state);
    setText("status-text", text);
    var connected = state === "open";
    var btn = $("connect");
    btn.textContent = wantOpen ? "Disconnect" : "Connect";
    btn.className = wantOpen ? "btn danger" : "btn primary";
    Array.prototype.forEach.call(document.querySelectorAll("[data-needs-connection]"), function (node) {
      node.disabled = !connected;
    });
  }

  function setIdentity(connId, userId) {
    setText("me-conn", connId === null ? "–" : connId);
    setText("me-user", userId === null ? "–" : userId);
    $("identity").classList.toggle("unknown", connId === null && userId === null);
  }

  function renderRooms() {
    var list = $("room-list");
    while (list.firstChild) list.removeChild(list.firstChild);
    $("rooms-empty").hidden = joined.size > 0;
    var rooms = Array.from(joined.keys()).sort();
    rooms.forEach(function (room) {
      var members = joined.get(room);
      var name = el("button", "room-name", room);
      name.type = "button";
      name.title = "Send room messages to " + room;
      name.addEventListener("click", function () {
        $("room-msg-room").value = room;
        $("room-msg-text").focus();
      });
      var leave = el("button", "btn small", "Leave");
      leave.type = "button";
      leave.setAttribute("data-needs-connection", "");
      leave.disabled = !client.connected;
      leave.addEventListener("click", function () {
        guard(function () {
          client.leaveRoom(room);
        });
      });
      var count = el("span", "members", members === null ? "…" : members + (members === 1 ? " member" : " members"));
      var item = el("li", "room", null, [name, count, leave]);
      item.setAttribute("data-room", room);
      list.appendChild(item);
    });
    setText("room-count", joined.size ? "(" + joined.size + ")" : "");
  }

  function guard(fn) {
    try {
      return fn();
    } catch (err) {
      logLocal(String(err && err.message ? err.message : err), "warn");
      return null;
    }
  }

  client.on("open", function (info) {
    setStatus("open", "Connected");
    logLocal(info.reconnected ? "Reconnected to " + WS_URL : "Connected to " + WS_URL);
  });

  client.on("close", function (info) {
    setIdentity(null, null);
    joined.forEach(function (_, room) {
      joined.set(room, null);
    });
    if (!info.willReconnect) {
      joined.clear();
      client.rooms.forEach(function (room) {
        client.leaveRoom(room); // forget them: a fresh Connect starts with no rooms
      });
    }
    renderRooms();
    if (info.willReconnect) {
      setStatus("reconnecting", "Reconnecting in " + (info.delay / 1000).toFixed(1) + " s…");
    } else {
      wantOpen = false;
      setStatus("closed", "Disconnected");
    }
    logLocal("Connection closed (code " + info.code + (info.reason ? ", " + info.reason : "") + ")", "warn");
  });

  client.on("any", function (env) {
    logEnvelope(env);
  });

  client.on("system", function (env) {
    var p = env.payload && typeof env.payload === "object" ? env.payload : {};
    var room = p.room !== undefined ? String(p.room) : env.room !== undefined ? String(env.room) : null;
    var members = typeof p.members === "number" ? p.members : null;
    if (p.event === "connected") {
      setIdentity(
        p.connection_id !== undefined ? String(p.connection_id) : null,
        p.user_id !== undefined ? String(p.user_id) : null
      );
    } else if (p.event === "joined" && room !== null) {
      joined.set(room, members);
      if (!$("room-msg-room").value) $("room-msg-room").value = room;
      renderRooms();
    } else if (p.event === "left" && room !== null) {
      joined.delete(room);
      renderRooms();
    } else if ((p.event === "user_joined" || p.event === "user_left") && room !== null && joined.has(room)) {
      joined.set(room, members);
      renderRooms();
    }
  });

  client.on("pong", function (env, extra) {
    if (extra && typeof extra.rtt === "number") setText("rtt", extra.rtt.toFixed(1) + " ms");
  });

  client.on("error", function (env) {
    var p = env.payload && typeof env.payload === "object" ? env.payload : {};
    if (p.code !== undefined) setText("last-error", String(p.code));
    // A refused join is dropped by the client; keep the list in step with it.
    var rooms = client.rooms;
    var changed = false;
    joined.forEach(function (_, room) {
      if (rooms.indexOf(room) === -1) {
        joined.delete(room);
        changed = true;
      }
    });
    if (changed) renderRooms();
  });

  $("connect").addEventListener("click", function () {
    if (wantOpen) {
      wantOpen = false;
      client.close(1000, "bye");
      setStatus("closed", "Disconnected");
    } else {
      wantOpen = true;
      client.options.reconnect = $("auto-reconnect").checked;
      setStatus("connecting", "Connecting…");
      guard(function () {
        client.connect();
      });
    }
  });

  $("auto-reconnect").addEventListener("change", function () {
    client.options.reconnect = this.checked;
  });

  function onSubmit(formId, fn) {
    $(formId).addEventListener("submit", function (ev) {
      ev.preventDefault();
      guard(fn);
    });
  }

  onSubmit("join-form", function () {
    var input = $("room-input");
    var room = input.value.trim();
    if (!room) return;
    client.joinRoom(room);
    if (!joined.has(room)) joined.set(room, null);
    renderRooms();
    input.value = "";
  });

  onSubmit("room-form", function () {
    var room = $("room-msg-room").value.trim();
    if (!room) throw new Error("Enter a room name");
    client.sendRoom(room, payloadFrom($("room-msg-text")));
    $("room-msg-text").value = "";
  });

  onSubmit("user-form", function () {
    var to = $("user-to").value.trim();
    if (!to) throw new Error("Enter a user id");
    client.sendUser(to, payloadFrom($("user-text")));
    $("user-text").value = "";
  });

  onSubmit("broadcast-form", function () {
    client.broadcast(payloadFrom($("broadcast-text")));
    $("broadcast-text").value = "";
  });

  $("ping").addEventListener("click", function () {
    guard(function () {
      client.ping();
    });
  });

  // ---- stats --------------------------------------------------------------------------------
  function renderStats(s) {
    setText("stat-connections", formatCount(s.connections));
    setText("stat-users", formatCount(s.users));
    setText("stat-rooms", formatCount(s.rooms));
    setText("stat-in", formatCount(s.messages_in));
    setText("stat-out", formatCount(s.messages_out));
    setText("stat-uptime", s.uptime_s === undefined ? "–" : formatUptime(s.uptime_s));
    var list = $("stat-room-list");
    while (list.firstChild) list.removeChild(list.firstChild);
    var rooms = Array.isArray(s.room_list) ? s.room_list : [];
    rooms.slice(0, 100).forEach(function (r) {
      var label = r && typeof r === "object" ? (r.name !== undefined ? r.name : safeJson(r)) : r;
      list.appendChild(el("li", "chip", label));
    });
    if (rooms.length > 100) list.appendChild(el("li", "chip more", "+" + (rooms.length - 100) + " more"));
    if (!rooms.length) list.appendChild(el("li", "chip none", "no rooms"));
  }

  function pollStats() {
    fetch(STATS_URL, { cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (resp) {
        if (!resp.ok) throw new Error("HTTP " + resp.status);
        return resp.json();
      })
      .then(function (stats) {
        if (!stats || typeof stats !== "object") throw new Error("bad stats");
        renderStats(stats);
        setText("stats-status", "updated " + clock(new Date()).slice(0, 8));
        $("stats").classList.remove("stale");
      })
      .catch(function (err) {
        setText("stats-status", "unavailable (" + (err && err.message ? err.message : err) + ")");
        $("stats").classList.add("stale");
      })
      .then(function () {
        setTimeout(pollStats, STATS_EVERY_MS);
      });
  }

  setIdentity(null, null);
  setStatus("closed", "Disconnected");
  renderRooms();
  pollStats();
})();
