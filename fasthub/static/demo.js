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
  var TYPING_SHOWN_MS = 3000; // "alice is typing…" stays this long after her last typing event

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

  function hex(bytes, max) {
    var out = "";
    for (var i = 0; i < bytes.length && i < max; i++) out += (bytes[i] < 16 ? "0" : "") + bytes[i].toString(16);
    return out + (bytes.length > max ? "…" : "");
  }

  /** JSON.stringify, with MessagePack's extra values shown: BigInt as its digits, bytes as hex. */
  function jsonReplacer(key, value) {
    if (typeof value === "bigint") return value.toString();
    if (value instanceof Uint8Array) return "<" + value.length + " bytes: " + hex(value, 64) + ">";
    return value;
  }

  function plural(n, one, many) {
    return n + " " + (n === 1 ? one : many);
  }

  function safeJson(value) {
    try {
      var s = JSON.stringify(value, jsonReplacer);
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

  /** Application data that is not an envelope: a binary frame (bytes) or a text frame. */
  function logData(data) {
    var item = el("li", "entry kind-data");
    item.setAttribute("data-type", "data");
    var binary = typeof data !== "string";
    var label = binary ? "binary, " + plural(data.length, "byte", "bytes") : "text";
    item.appendChild(el("div", "head", null, [el("time", "ts local", clock(new Date())), el("span", "badge", label)]));
    item.appendChild(el("pre", "payload", binary ? hex(data, 256) : data));
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
  var asked = new Set(); // rooms joined from the form: their join reply makes them the current room
  var wantOpen = false;
  // The current room is the room message box's room when it is joined: the presence list and
  // the typing line are about it, and typing in the message box tells its members.
  var current = null;
  var presenceSeq = 0; // the latest presence request (older answers are dropped)
  var typers = new Map(); // room -> Map(user id -> timer that forgets it)

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
    $("use-msgpack").disabled = wantOpen; // the format is chosen when connecting
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
        syncCurrent();
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
      var item = el("li", "room" + (room === current ? " current" : ""), null, [name, count, leave]);
      item.setAttribute("data-room", room);
      if (room === current) name.setAttribute("aria-current", "true");
      list.appendChild(item);
    });
    setText("room-count", joined.size ? "(" + joined.size + ")" : "");
  }

  // ---- presence and typing -------------------------------------------------------------------
  function currentRoom() {
    var room = $("room-msg-room").value.trim();
    return joined.has(room) ? room : null;
  }

  /** Follow the room message box: a new current room gets its presence and typing line. */
  function syncCurrent(refresh) {
    var room = currentRoom();
    var changed = room !== current;
    current = room;
    if (changed) {
      renderRooms();
      renderTyping();
    }
    if (changed || refresh) refreshPresence();
  }

  function refreshPresence() {
    var room = current;
    var seq = ++presenceSeq;
    setText("presence-room", room === null ? "" : room);
    if (room === null || !client.connected) {
      renderPresence(room, null, room === null ? null : "Not connected.");
      return;
    }
    client.presence(room).then(
      function (payload) {
        if (seq === presenceSeq) renderPresence(room, payload);
      },
      function (err) {
        if (seq === presenceSeq) renderPresence(room, null, "Could not ask who is here: " + (err.code || err.message));
      }
    );
  }

  /** The presence list of `room` (payload: the presence reply's), or a note when there is none. */
  function renderPresence(room, payload, note) {
    var list = $("presence-list");
    while (list.firstChild) list.removeChild(list.firstChild);
    list.setAttribute("data-room", room === null ? "" : room);
    if (!payload) {
      var hint = joined.size ? "Pick a room: type a joined room in the room message box, or click its name." : "Join a room to see who is in it.";
      setText("presence-summary", note || hint);
      return;
    }
    var people = payload.presence && typeof payload.presence === "object" ? payload.presence : {};
    var me = client.userId;
    var users = Object.keys(people).sort(function (a, b) {
      return (b === me) - (a === me) || (a < b ? -1 : a > b ? 1 : 0); // you first, then by id
    });
    users.forEach(function (user) {
      var entry = people[user] && typeof people[user] === "object" ? people[user] : {};
      var n = typeof entry.connections === "number" ? entry.connections : null;
      var item = el("li", "person", null, [
        el("span", "who", user),
        user === me ? el("span", "you", "(you)") : null,
        el("span", "conns", n === null ? "" : plural(n, "connection", "connections")),
      ]);
      if (entry.info !== undefined && entry.info !== null) item.appendChild(el("span", "info", safeJson(entry.info)));
      item.setAttribute("data-user", user);
      item.setAttribute("data-connections", n === null ? "" : String(n));
      list.appendChild(item);
    });
    var numUsers = typeof payload.num_users === "number" ? payload.num_users : users.length;
    var numConns = typeof payload.num_connections === "number" ? payload.num_connections : null;
    setText(
      "presence-summary",
      plural(numUsers, "user", "users") + (numConns === null ? "" : ", " + plural(numConns, "connection", "connections"))
    );
  }

  /** "alice is typing…" for the current room (nothing when nobody is). */
  function renderTyping() {
    var users = current !== null && typers.has(current) ? Array.from(typers.get(current).keys()).sort() : [];
    var text = "";
    if (users.length === 1) text = users[0] + " is typing…";
    else if (users.length === 2) text = users[0] + " and " + users[1] + " are typing…";
    else if (users.length > 2) text = users[0] + ", " + users[1] + " and " + plural(users.length - 2, "other", "others") + " are typing…";
    setText("typing", text);
  }

  function stopTyping(room, user) {
    var inRoom = typers.get(room);
    if (!inRoom || !inRoom.has(user)) return;
    clearTimeout(inRoom.get(user));
    inRoom.delete(user);
    if (!inRoom.size) typers.delete(room);
    if (room === current) renderTyping();
  }

  function forgetTyping(room) {
    var inRoom = typers.get(room);
    if (!inRoom) return;
    inRoom.forEach(function (timer) {
      clearTimeout(timer);
    });
    typers.delete(room);
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
    setText("format", info.format === "msgpack" ? "MessagePack" : "JSON");
    logLocal((info.reconnected ? "Reconnected to " : "Connected to ") + WS_URL + (info.format === "msgpack" ? " (MessagePack)" : ""));
    if (client.options.format === "msgpack" && info.format !== "msgpack") {
      logLocal("The server did not select fasthub.msgpack: this connection speaks JSON", "warn");
    }
  });

  client.on("close", function (info) {
    setIdentity(null, null);
    setText("format", "–");
    Array.from(typers.keys()).forEach(forgetTyping);
    renderTyping();
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
    syncCurrent(true);
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

  client.on("binary", logData);
  client.on("text", logData);

  client.on("typing", function (env) {
    if (env.room === undefined || env.from === undefined) return;
    var room = String(env.room);
    var user = String(env.from);
    if (user === client.userId) return; // this user typing in another tab
    var inRoom = typers.get(room);
    if (!inRoom) typers.set(room, (inRoom = new Map()));
    clearTimeout(inRoom.get(user));
    inRoom.set(
      user,
      setTimeout(function () {
        stopTyping(room, user);
      }, TYPING_SHOWN_MS)
    );
    if (room === current) renderTyping();
  });

  client.on("room_message", function (env) {
    if (env.room !== undefined && env.from !== undefined) stopTyping(String(env.room), String(env.from)); // sent it
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
      if (asked.has(room) || !$("room-msg-room").value) $("room-msg-room").value = room; // joined from the form: current
      asked.delete(room);
      renderRooms();
      syncCurrent(true);
    } else if (p.event === "left" && room !== null) {
      joined.delete(room);
      forgetTyping(room);
      renderRooms();
      syncCurrent();
    } else if (p.event === "resumed" && p.rooms && typeof p.rooms === "object") {
      Object.keys(p.rooms).forEach(function (name) {
        var r = p.rooms[name];
        if (r && r.joined && joined.has(name)) joined.set(name, typeof r.members === "number" ? r.members : null);
      });
      renderRooms();
      syncCurrent(true);
    } else if ((p.event === "user_joined" || p.event === "user_left") && room !== null && joined.has(room)) {
      joined.set(room, members);
      if (p.event === "user_left" && p.user_id !== undefined) stopTyping(room, String(p.user_id));
      renderRooms();
      if (room === current) refreshPresence();
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
    if (changed) {
      renderRooms();
      syncCurrent();
    }
  });

  $("connect").addEventListener("click", function () {
    if (wantOpen) {
      wantOpen = false;
      client.close(1000, "bye");
      setStatus("closed", "Disconnected");
    } else {
      wantOpen = true;
      client.options.reconnect = $("auto-reconnect").checked;
      client.options.format = $("use-msgpack").checked ? "msgpack" : "json";
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
    asked.add(room);
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

  // Typing in the message box tells the current room (the client sends at most one a second).
  $("room-msg-text").addEventListener("input", function () {
    var room = currentRoom();
    if (room !== null && client.connected && this.value.trim()) client.typing(room);
  });

  $("room-msg-room").addEventListener("input", function () {
    syncCurrent();
  });

  $("presence-refresh").addEventListener("click", function () {
    refreshPresence();
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
  renderPresence(null, null);
  pollStats();
})();
