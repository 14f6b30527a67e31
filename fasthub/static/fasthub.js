/*!
 * fasthub.js - a small, dependency-free browser client for the fasthub WebSocket hub.
 *
 * ES2017, no build step. Exposes `window.FastHubClient` (and `module.exports` under CommonJS).
 *
 *   const hub = new FastHubClient("ws://localhost:8000/ws", { reconnect: true });
 *   hub.on("open", () => hub.joinRoom("lobby"));
 *   hub.on("room_message", (env) => console.log(env.from, env.payload));
 *   hub.on("any", (env) => console.debug(env));
 *   hub.connect();
 *
 * Recovery: the client keeps the position (offset, epoch) of every room it joined, drops
 * duplicates, and after a reconnect resumes its session with the `connected` message's token
 * (or rejoins each room with its position), so the messages missed meanwhile arrive first, in
 * order. A gap the server cannot fill is reported with the "unrecovered" event. `publish(room,
 * payload)` returns a Promise of the server's ack ({offset, epoch}); it is sent again after a
 * reconnect with the same idempotency key, so it is stored once.
 *
 * Events passed to `on(type, fn)`:
 *   - any envelope type sent by the server ("system", "pong", "room_message", "user_message",
 *     "broadcast", "error", ...): fn(envelope, extra)
 *   - "any": every received envelope: fn(envelope, extra)
 *   - "open": fn({reconnected: bool})
 *   - "close": fn({code, reason, wasClean, willReconnect, delay})
 *   - "reconnecting": fn({attempt, delay})  (just before a reconnect attempt is scheduled)
 *   - "resumed": fn(payload)  (the server's answer to a session resume)
 *   - "unrecovered": fn({room, reason, offset, epoch})  (a gap that could not be filled: reload)
 * For "pong" replies to `ping()`, extra is {rtt: milliseconds}.
 */
(function (root, factory) {
  "use strict";
  var FastHubClient = factory();
  if (typeof module === "object" && module && module.exports) {
    module.exports = FastHubClient;
  }
  if (root) {
    root.FastHubClient = FastHubClient;
  }
})(typeof self !== "undefined" ? self : typeof globalThis !== "undefined" ? globalThis : this, function () {
  "use strict";

  var CONNECTING = 0;
  var OPEN = 1;

  var idCounter = 0;
  var idPrefix = randomToken();

  function randomToken() {
    var c = typeof crypto !== "undefined" ? crypto : null;
    if (c && typeof c.getRandomValues === "function") {
      var buf = new Uint32Array(2);
      c.getRandomValues(buf);
      return buf[0].toString(36) + buf[1].toString(36);
    }
    return Math.random().toString(36).slice(2) + Math.random().toString(36).slice(2);
  }

  /** A process-unique id: random per page load + a counter + the time. */
  function newId() {
    idCounter += 1;
    return "c-" + idPrefix + "-" + Date.now().toString(36) + "-" + idCounter.toString(36);
  }

  function now() {
    return typeof performance !== "undefined" && performance.now ? performance.now() : Date.now();
  }

  function assign(target) {
    for (var i = 1; i < arguments.length; i++) {
      var src = arguments[i];
      if (src) {
        Object.keys(src).forEach(function (k) {
          target[k] = src[k];
        });
      }
    }
    return target;
  }

  var DEFAULTS = {
    reconnect: true,
    minDelay: 500, // ms, first reconnect delay (before jitter)
    maxDelay: 10000, // ms, backoff cap
    protocols: undefined, // WebSocket sub-protocols
    WebSocket: undefined, // WebSocket implementation (defaults to the global one)
  };

  class FastHubClient {
    /**
     * @param {string} url  ws:// or wss:// URL of the hub endpoint (e.g. "wss://host/ws")
     * @param {object} [options] {reconnect=true, minDelay=500, maxDelay=10000, protocols, WebSocket}
     */
    constructor(url, options) {
      this.url = url;
      this.options = assign({}, DEFAULTS, options || {});
      this.ws = null;
      this.connectionId = null;
      this.userId = null;
      this._listeners = Object.create(null);
      this._rooms = new Set(); // rooms we want to be in; rejoined after every reconnect
      this._pendingJoins = new Map(); // join id -> room (dropped from _rooms if the join fails)
      this._pendingPings = new Map(); // ping id -> send time
      this._attempt = 0;
      this._timer = null;
      this._manualClose = true;
      this._everOpened = false;
      this._positions = new Map(); // room -> {offset, epoch} of the last stored message seen
      this._publishes = new Map(); // id -> {env, resolve, reject} until acked
      this.session = null; // the reconnect token of the current connection
      this._resumeToken = null; // the previous connection's, sent once after a reconnect
      this.duplicatesDropped = 0;
    }

    /** The position {offset, epoch} of a room (null before its first join reply). */
    position(room) {
      var at = this._positions.get(String(room));
      return at ? { offset: at.offset, epoch: at.epoch } : null;
    }

    /** "connecting" | "open" | "closing" | "closed" | "reconnecting" */
    get state() {
      if (this._timer !== null) return "reconnecting";
      if (!this.ws) return "closed";
      return ["connecting", "open", "closing", "closed"][this.ws.readyState] || "closed";
    }

    get connected() {
      return !!this.ws && this.ws.readyState === OPEN;
    }

    /** Rooms this client is in (or will rejoin on reconnect). */
    get rooms() {
      return Array.from(this._rooms);
    }

    /** Subscribe; returns a function that unsubscribes. */
    on(type, fn) {
      if (typeof fn !== "function") throw new TypeError("listener must be a function");
      (this._listeners[type] || (this._listeners[type] = [])).push(fn);
      var self = this;
      return function () {
        self.off(type, fn);
      };
    }

    off(type, fn) {
      var list = this._listeners[type];
      if (!list) return;
      var i = list.indexOf(fn);
      if (i >= 0) list.splice(i, 1);
    }

    _emit(type, arg, extra) {
      var list = this._listeners[type];
      if (!list) return;
      list.slice().forEach(function (fn) {
        try {
          fn(arg, extra);
        } catch (err) {
          // One failing listener must not break the others or the socket loop.
          if (typeof console !== "undefined") console.error("fasthub listener for '" + type + "' failed:", err);
        }
      });
    }

    /** Open the socket (no-op if already open or connecting). */
    connect() {
      this._manualClose = false;
      if (this._timer !== null) {
        clearTimeout(this._timer);
        this._timer = null;
      }
      if (this.ws && (this.ws.readyState === CONNECTING || this.ws.readyState === OPEN)) return this;
      this._open();
      return this;
    }

    _open() {
      var Impl = this.options.WebSocket || (typeof WebSocket !== "undefined" ? WebSocket : null);
      if (!Impl) throw new Error("no WebSocket implementation available");
      var ws;
      try {
        ws = this.options.protocols ? new Impl(this.url, this.options.protocols) : new Impl(this.url);
      } catch (err) {
        // e.g. a malformed URL: report it as a close and (maybe) retry.
        this.ws = null;
        this._handleClose(null, { code: 1006, reason: String(err && err.message ? err.message : err), wasClean: false });
        return;
      }
      this.ws = ws;
      var self = this;
      ws.onopen = function () {
        if (self.ws !== ws) return;
        var reconnected = self._everOpened;
        self._everOpened = true;
        self._attempt = 0;
        self._emit("open", { reconnected: reconnected });
        if (!reconnected) self._rejoin();
        // after a reconnect: wait for "connected" (its token), then resume (see _handleMessage)
      };
      ws.onmessage = function (ev) {
        if (self.ws !== ws) return;
        self._handleMessage(ev.data);
      };
      ws.onerror = function () {
        // The browser gives no detail here; "close" follows and carries the code.
      };
      ws.onclose = function (ev) {
        self._handleClose(ws, ev);
      };
    }

    _rejoin(only) {
      var self = this;
      this._pendingJoins.clear();
      this._rooms.forEach(function (room) {
        if (!only || only.has(room)) self._sendJoin(room);
      });
      this._publishes.forEach(function (p) {
        self.ws.send(JSON.stringify(p.env)); // not acked before the drop: again, same key
      });
    }

    _resume() {
      var token = this._resumeToken;
      this._resumeToken = null;
      if (!token) {
        this._rejoin();
        return;
      }
      var rooms = {};
      var self = this;
      this._rooms.forEach(function (room) {
        var at = self._positions.get(room);
        rooms[room] = at && at.epoch ? { offset: at.offset, epoch: at.epoch } : null;
      });
      this._resumeId = this.send({ type: "resume", payload: { token: token, rooms: rooms } });
    }

    _resumed(env) {
      var payload = env.payload || {};
      var joined = payload.resumed && payload.rooms ? payload.rooms : {};
      var again = new Set();
      this._rooms.forEach(function (room) {
        if (!joined[room] || !joined[room].joined) again.add(room);
      });
      this._rejoin(again);
      this._emit("resumed", payload);
    }

    _positionFrom(payload, room) {
      if (room == null) return;
      var before = this._positions.get(room) || null;
      if ((payload.event === "joined" || payload.event === "resync") && payload.epoch != null) {
        this._positions.set(room, { offset: payload.offset, epoch: payload.epoch });
      }
      if (payload.recovered === false) {
        this._emit("unrecovered", {
          room: room,
          reason: payload.reason,
          from: before,
          offset: payload.offset,
          epoch: payload.epoch,
        });
      }
    }

    _handleMessage(data) {
      if (typeof data !== "string") return; // the hub speaks JSON text frames only
      var env;
      try {
        env = JSON.parse(data);
      } catch (err) {
        if (typeof console !== "undefined") console.warn("fasthub: ignoring a non-JSON frame");
        return;
      }
      if (!env || typeof env !== "object" || Array.isArray(env)) return;
      var extra;
      var payload = env.payload && typeof env.payload === "object" ? env.payload : null;
      if (env.type === "system" && payload) {
        if (payload.event === "connected") {
          this.connectionId = payload.connection_id != null ? String(payload.connection_id) : null;
          this.userId = payload.user_id != null ? String(payload.user_id) : null;
          if (this._everOpened && this.session && !this._resumeToken) this._resumeToken = this.session;
          this.session = payload.session || null;
          if (this._seenConnected) this._resume(); // a reconnect: take the session back
          this._seenConnected = true;
        } else if (payload.event === "resumed" && env.id != null && env.id === this._resumeId) {
          this._resumed(env);
        } else {
          if (payload.event === "joined" && env.id != null) this._pendingJoins.delete(env.id);
          this._positionFrom(payload, env.room != null ? env.room : payload.room);
        }
      } else if ((env.type === "ack" || env.type === "error") && env.id != null && this._publishes.has(env.id)) {
        var pending = this._publishes.get(env.id);
        if (env.type === "ack") {
          this._publishes.delete(env.id);
          pending.resolve(env.payload || {});
        } else if (env.payload && env.payload.code !== "unavailable") {
          this._publishes.delete(env.id); // "unavailable": sent again after the next reconnect
          pending.reject(env.payload);
        }
      } else if (env.type === "room_message" && typeof env.offset === "number" && env.room != null) {
        var at = this._positions.get(env.room);
        if (at && env.offset <= at.offset) {
          this.duplicatesDropped += 1;
          return; // seen already (a resume overlapping a live delivery)
        }
        if (at) at.offset = env.offset;
      } else if (env.type === "error" && env.id != null && this._pendingJoins.has(env.id)) {
        // The join was refused: do not keep retrying it on reconnect.
        this._rooms.delete(this._pendingJoins.get(env.id));
        this._pendingJoins.delete(env.id);
      } else if (env.type === "pong" && env.id != null && this._pendingPings.has(env.id)) {
        extra = { rtt: now() - this._pendingPings.get(env.id) };
        this._pendingPings.delete(env.id);
      }
      if (typeof env.type === "string") this._emit(env.type, env, extra);
      this._emit("any", env, extra);
    }

    _handleClose(ws, ev) {
      if (ws !== null && this.ws !== ws) return; // a socket we already replaced
      this.ws = null;
      this._pendingPings.clear();
      var willReconnect = !!this.options.reconnect && !this._manualClose;
      var delay = willReconnect ? this._nextDelay() : null;
      this._emit("close", {
        code: ev ? ev.code : 1006,
        reason: ev ? ev.reason : "",
        wasClean: ev ? !!ev.wasClean : false,
        willReconnect: willReconnect,
        delay: delay,
      });
      if (willReconnect && !this._manualClose && this._timer === null) {
        this._attempt += 1;
        this._emit("reconnecting", { attempt: this._attempt, delay: delay });
        var self = this;
        this._timer = setTimeout(function () {
          self._timer = null;
          if (!self._manualClose) self._open();
        }, delay);
      }
    }

    /** Exponential backoff with "equal jitter": a random delay in [d/2, d], d = min(cap, min * 2^n). */
    _nextDelay() {
      var base = Math.max(1, this.options.minDelay);
      var cap = Math.max(base, this.options.maxDelay);
      var d = Math.min(cap, base * Math.pow(2, Math.min(this._attempt, 30)));
      return Math.round(d / 2 + Math.random() * (d / 2));
    }

    /** Close for good (no reconnect until `connect()` is called again). Joined rooms are remembered. */
    close(code, reason) {
      this._manualClose = true;
      if (this._timer !== null) {
        clearTimeout(this._timer);
        this._timer = null;
      }
      var ws = this.ws;
      if (ws && (ws.readyState === CONNECTING || ws.readyState === OPEN)) {
        ws.close(code || 1000, reason || "");
      }
      return this;
    }

    /**
     * Send an envelope object; an `id` is added if absent. Returns the id.
     * Throws if the socket is not open.
     */
    send(envelope) {
      if (!envelope || typeof envelope !== "object") throw new TypeError("envelope must be an object");
      if (!this.connected) throw new Error("fasthub: not connected");
      var env = assign({}, envelope);
      if (env.id === undefined || env.id === null || env.id === "") env.id = newId();
      this.ws.send(JSON.stringify(env));
      return env.id;
    }

    /** Application-level ping; the matching "pong" listener gets extra.rtt (ms). */
    ping() {
      var id = this.send({ type: "ping" });
      this._pendingPings.set(id, now());
      return id;
    }

    _sendJoin(room) {
      var env = { type: "join_room", room: room };
      var at = this._positions.get(room);
      if (at && at.epoch) env.since = { offset: at.offset, epoch: at.epoch };
      var id = this.send(env);
      this._pendingJoins.set(id, room);
      return id;
    }

    /**
     * Send a room message and get a Promise of its ack ({offset, epoch}). Until acked it is sent
     * again after every reconnect, with the same idempotency key (stored once).
     */
    publish(room, payload) {
      var env = { type: "room_message", room: String(room), payload: payload, id: newId(), idempotency_key: newId() };
      var self = this;
      return new Promise(function (resolve, reject) {
        self._publishes.set(env.id, { env: env, resolve: resolve, reject: reject });
        if (self.connected) self.ws.send(JSON.stringify(env));
      });
    }

    /** Join a room. While disconnected the room is remembered and joined on (re)connect (returns null). */
    joinRoom(room) {
      room = String(room);
      this._rooms.add(room);
      return this.connected ? this._sendJoin(room) : null;
    }

    /** Leave a room (and stop rejoining it). Returns the envelope id, or null while disconnected. */
    leaveRoom(room) {
      room = String(room);
      this._rooms.delete(room);
      this._positions.delete(room);
      return this.connected ? this.send({ type: "leave_room", room: room }) : null;
    }

    sendRoom(room, payload) {
      return this.send({ type: "room_message", room: String(room), payload: payload });
    }

    sendUser(to, payload) {
      return this.send({ type: "user_message", to: String(to), payload: payload });
    }

    broadcast(payload) {
      return this.send({ type: "broadcast", payload: payload });
    }
  }

  FastHubClient.newId = newId;
  return FastHubClient;
});
