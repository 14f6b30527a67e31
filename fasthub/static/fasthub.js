/*!
 * fasthub.js - a small, dependency-free browser client for the fasthub WebSocket hub.
 *
 * ES2017, no build step (BigInt is used only where the browser has it). Exposes
 * `window.FastHubClient` (and `module.exports` under CommonJS).
 *
 *   const hub = new FastHubClient("ws://localhost:8000/ws", { reconnect: true });
 *   hub.on("open", () => hub.joinRoom("lobby"));
 *   hub.on("room_message", (env) => console.log(env.from, env.payload));
 *   hub.on("typing", (env) => console.log(env.from, "is typing in", env.room));
 *   hub.on("any", (env) => console.debug(env));
 *   hub.connect();
 *   const who = await hub.presence("lobby");  // {presence: {<user id>: {connections, info}}, num_users, num_connections}
 *
 * Options: {reconnect=true, minDelay=500, maxDelay=10000, protocols, token, format="json",
 * requestTimeout=10000, typingInterval=1000, WebSocket}.
 *   - protocols: WebSocket subprotocols to offer (a string or an array), e.g. ["fasthub",
 *     "bearer.<jwt>"]: browsers cannot set headers, so the server reads a `bearer.<jwt>` entry.
 *   - token: a JWT (or a function returning one, asked at every connect): offers "fasthub" and
 *     "bearer.<token>" (the same as those protocols).
 *   - format: "json" (text frames) or "msgpack": offers the subprotocols "fasthub.msgpack" and
 *     "fasthub" first (before any other entry); when the server selects "fasthub.msgpack",
 *     envelopes go both ways as MessagePack maps in binary frames, application bytes
 *     (`send_bytes`) arrive as a MessagePack bin and text frames are application text. A server
 *     that does not know MessagePack selects "fasthub" and the connection speaks JSON ("fasthub"
 *     is offered for that: browsers fail a connection whose server selects none of the offered
 *     subprotocols). `client.format` says what the open connection speaks ("json" | "msgpack";
 *     null while closed), `client.protocol` is the subprotocol the server selected ("" for none).
 *
 * On a MessagePack connection payloads are encoded by `FastHubClient.msgpack.encode`; the
 * server takes what JSON can carry (bytes in a payload, or a Map with number keys, are answered
 * `invalid_message`), and integers beyond +-(2^53 - 1) arrive as BigInt (JSON.parse would round
 * them).
 *
 * Recovery: the client keeps the position (offset, epoch) of every room it joined, drops
 * duplicates, and after a reconnect resumes its session with the `connected` message's token
 * (or rejoins each room with its position), so the messages missed meanwhile arrive first, in
 * order. A gap the server cannot fill is reported with the "unrecovered" event. `publish(room,
 * payload)` returns a Promise of the server's ack ({offset, epoch}); it is sent again after a
 * reconnect with the same idempotency key, so it is stored once.
 *
 * Presence and typing: `presence(room)` and `presenceStats(room)` return Promises of the reply's
 * payload (matched by id), rejected with an Error whose `code` is the server's error code
 * ("forbidden", "unavailable", ...) or "timeout" (no reply in requestTimeout ms),
 * "disconnected" (the connection closed first) or "not_connected". `typing(room)` may be
 * called on every keystroke: it sends at most one `typing` per room every typingInterval ms
 * (the server relays at most one per 2 s) and returns whether it sent one.
 *
 * Events passed to `on(type, fn)`:
 *   - any envelope type sent by the server ("system", "pong", "room_message", "user_message",
 *     "broadcast", "error", "typing", "presence", "presence_stats", ...): fn(envelope, extra).
 *     A "typing" envelope is {type, room, from, timestamp}; the sender's own connection does not
 *     get it, the user's other connections do (compare env.from with client.userId to hide it).
 *   - "any": every received envelope: fn(envelope, extra)
 *   - "binary": fn(Uint8Array)  (application bytes, `send_bytes` on the server: a binary frame
 *     on a JSON connection, a MessagePack bin on a MessagePack one; `sendBytes(data)` sends
 *     them the other way, to the server's `on_binary`)
 *   - "text": fn(string)  (a text frame that is not an envelope: application text)
 *   - "open": fn({reconnected: bool, format: "json" | "msgpack", protocol})
 *   - "close": fn({code, reason, wasClean, willReconnect, delay})
 *   - "reconnecting": fn({attempt, delay})  (just before a reconnect attempt is scheduled)
 *   - "resumed": fn(payload)  (the server's answer to a session resume)
 *   - "unrecovered": fn({room, reason, offset, epoch})  (a gap that could not be filled: reload)
 * For "pong" replies to `ping()`, extra is {rtt: milliseconds}.
 *
 * `FastHubClient.msgpack` is the MessagePack codec: {encode(value) -> Uint8Array, decode(bytes)}
 * (its rules are written above `encode` below).
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

  // ---- MessagePack ---------------------------------------------------------------------------
  // A small codec for the "fasthub.msgpack" subprotocol (https://github.com/msgpack/msgpack/blob/master/spec.md).
  //
  // encode(value) -> Uint8Array. The same values as JSON.stringify, encoded in the smallest form
  // (what msgpack-python and ormsgpack choose): null/undefined -> nil; booleans; integral Numbers
  // in [-2^63, 2^64) -> fixint/uint8-64/int8-64, other finite Numbers -> float64, NaN and
  // +-Infinity -> nil (as JSON gives null); BigInt in [-2^63, 2^64) -> an integer (RangeError
  // outside); strings -> fixstr/str8/16/32 (UTF-8; a lone surrogate becomes U+FFFD);
  // ArrayBuffer and its views (Uint8Array...) -> bin8/16/32; arrays -> fixarray/array16/32
  // (undefined and functions in them -> nil); Map -> a map; an object with toJSON (Date) ->
  // what toJSON returns; other objects -> a map of their own enumerable keys (undefined and
  // function values left out). More than 512 levels of nesting (or a cycle): RangeError.
  //
  // decode(bytes) -> value, bytes an ArrayBuffer or a view holding exactly one value: nil ->
  // null; integers -> Number, except those outside +-(2^53 - 1), which come back as BigInt (as
  // Number, rounded, where the browser has no BigInt); float32/64 -> Number; str -> string
  // (invalid UTF-8 is an error); bin -> a Uint8Array (a copy); arrays -> Array; maps -> plain
  // objects (keys: strings; integer, boolean and nil keys become their String(); other keys are
  // an error). Extension types, the unused byte 0xc1, truncated input and bytes after the value
  // throw a MessagePackError. A float with an integral value (1.0) comes back as the Number 1
  // and is encoded again as an integer, as with JSON.

  var MAX_DEPTH = 512;
  var POW32 = 4294967296;
  var HAS_BIGINT = typeof BigInt === "function";
  var utf8 = typeof TextDecoder !== "undefined" ? new TextDecoder("utf-8", { fatal: true }) : null;

  function MessagePackError(message) {
    var err = new Error("MessagePack: " + message);
    err.name = "MessagePackError";
    return err;
  }

  function Writer() {
    this.buf = new Uint8Array(128);
    this.view = new DataView(this.buf.buffer);
    this.pos = 0;
  }

  Writer.prototype.reserve = function (n) {
    var need = this.pos + n;
    if (need <= this.buf.length) return;
    var size = this.buf.length * 2;
    while (size < need) size *= 2;
    var buf = new Uint8Array(size);
    buf.set(this.buf.subarray(0, this.pos));
    this.buf = buf;
    this.view = new DataView(buf.buffer);
  };

  Writer.prototype.byte = function (b) {
    this.reserve(1);
    this.buf[this.pos++] = b;
  };

  /** A type byte followed by an unsigned big-endian integer of `size` bytes (1, 2 or 4). */
  Writer.prototype.head = function (type, size, n) {
    this.reserve(1 + size);
    this.buf[this.pos++] = type;
    if (size === 1) this.view.setUint8(this.pos, n);
    else if (size === 2) this.view.setUint16(this.pos, n);
    else this.view.setUint32(this.pos, n);
    this.pos += size;
  };

  /** fix form (`fix` | n) under `fixMax`, else the 8/16/32-bit forms at `type8` (8-bit: type8 < 0 skips it). */
  Writer.prototype.length = function (n, fix, fixMax, type8, type16, type32) {
    if (n < fixMax) this.byte(fix | n);
    else if (type8 >= 0 && n < 0x100) this.head(type8, 1, n);
    else if (n < 0x10000) this.head(type16, 2, n);
    else if (n < POW32) this.head(type32, 4, n);
    else throw new RangeError("MessagePack: too long (" + n + ")");
  };

  Writer.prototype.integer = function (v) {
    var hi;
    if (v >= 0) {
      if (v < 0x80) this.byte(v);
      else if (v < 0x100) this.head(0xcc, 1, v);
      else if (v < 0x10000) this.head(0xcd, 2, v);
      else if (v < POW32) this.head(0xce, 4, v);
      else {
        hi = Math.floor(v / POW32);
        this.head(0xcf, 4, hi);
        this.reserve(4);
        this.view.setUint32(this.pos, v - hi * POW32);
        this.pos += 4;
      }
    } else if (v >= -0x20) {
      this.byte(v & 0xff);
    } else if (v >= -0x80) {
      this.reserve(2);
      this.buf[this.pos++] = 0xd0;
      this.view.setInt8(this.pos++, v);
    } else if (v >= -0x8000) {
      this.reserve(3);
      this.buf[this.pos++] = 0xd1;
      this.view.setInt16(this.pos, v);
      this.pos += 2;
    } else if (v >= -0x80000000) {
      this.reserve(5);
      this.buf[this.pos++] = 0xd2;
      this.view.setInt32(this.pos, v);
      this.pos += 4;
    } else {
      hi = Math.floor(v / POW32); // two's complement: a negative high word, an unsigned low word
      this.reserve(9);
      this.buf[this.pos++] = 0xd3;
      this.view.setInt32(this.pos, hi);
      this.view.setUint32(this.pos + 4, v - hi * POW32);
      this.pos += 8;
    }
  };

  Writer.prototype.bigint = function (v) {
    if (v >= BigInt(-Number.MAX_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)) {
      this.integer(Number(v));
      return;
    }
    this.reserve(9);
    if (v > 0 && v < BigInt(2) ** BigInt(64)) {
      this.buf[this.pos] = 0xcf;
      this.view.setBigUint64(this.pos + 1, v);
    } else if (v < 0 && v >= -(BigInt(2) ** BigInt(63))) {
      this.buf[this.pos] = 0xd3;
      this.view.setBigInt64(this.pos + 1, v);
    } else {
      throw new RangeError("MessagePack: integer out of 64-bit range: " + v);
    }
    this.pos += 9;
  };

  Writer.prototype.string = function (s) {
    // UTF-8 length first (a lone surrogate is 3 bytes, U+FFFD), then the header, then the bytes.
    var len = s.length;
    var n = 0;
    var i, c, d;
    for (i = 0; i < len; i++) {
      c = s.charCodeAt(i);
      if (c < 0x80) n += 1;
      else if (c < 0x800) n += 2;
      else if (c >= 0xd800 && c <= 0xdbff && i + 1 < len && (d = s.charCodeAt(i + 1)) >= 0xdc00 && d <= 0xdfff) {
        n += 4;
        i++;
      } else n += 3;
    }
    this.length(n, 0xa0, 32, 0xd9, 0xda, 0xdb);
    this.reserve(n);
    var buf = this.buf;
    var p = this.pos;
    for (i = 0; i < len; i++) {
      c = s.charCodeAt(i);
      if (c < 0x80) {
        buf[p++] = c;
      } else if (c < 0x800) {
        buf[p++] = 0xc0 | (c >> 6);
        buf[p++] = 0x80 | (c & 0x3f);
      } else if (c >= 0xd800 && c <= 0xdfff) {
        if (c <= 0xdbff && i + 1 < len && (d = s.charCodeAt(i + 1)) >= 0xdc00 && d <= 0xdfff) {
          c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
          i++;
          buf[p++] = 0xf0 | (c >> 18);
          buf[p++] = 0x80 | ((c >> 12) & 0x3f);
          buf[p++] = 0x80 | ((c >> 6) & 0x3f);
          buf[p++] = 0x80 | (c & 0x3f);
        } else {
          buf[p++] = 0xef; // a lone surrogate: U+FFFD, as TextEncoder does
          buf[p++] = 0xbf;
          buf[p++] = 0xbd;
        }
      } else {
        buf[p++] = 0xe0 | (c >> 12);
        buf[p++] = 0x80 | ((c >> 6) & 0x3f);
        buf[p++] = 0x80 | (c & 0x3f);
      }
    }
    this.pos = p;
  };

  Writer.prototype.binary = function (bytes) {
    this.length(bytes.length, 0, 0, 0xc4, 0xc5, 0xc6);
    this.reserve(bytes.length);
    this.buf.set(bytes, this.pos);
    this.pos += bytes.length;
  };

  /** Whether a map or object member is left out (as JSON.stringify leaves it out). */
  function skipped(v) {
    return v === undefined || typeof v === "function" || typeof v === "symbol";
  }

  Writer.prototype.value = function (v, depth) {
    var t = typeof v;
    if (v === null || v === undefined || t === "function" || t === "symbol") {
      this.byte(0xc0);
    } else if (t === "boolean") {
      this.byte(v ? 0xc3 : 0xc2);
    } else if (t === "number") {
      if (Number.isInteger(v) && v >= -9223372036854775808 && v < 18446744073709551616) {
        this.integer(v);
      } else if (isFinite(v)) {
        this.reserve(9);
        this.buf[this.pos] = 0xcb;
        this.view.setFloat64(this.pos + 1, v);
        this.pos += 9;
      } else {
        this.byte(0xc0); // NaN, Infinity: null, as in JSON
      }
    } else if (t === "string") {
      this.string(v);
    } else if (t === "bigint") {
      this.bigint(v);
    } else {
      if (depth >= MAX_DEPTH) throw new RangeError("MessagePack: nested deeper than " + MAX_DEPTH + " (a cycle?)");
      var i, keys, k, n;
      if (v instanceof Uint8Array) {
        this.binary(v);
      } else if (v instanceof ArrayBuffer) {
        this.binary(new Uint8Array(v));
      } else if (ArrayBuffer.isView(v)) {
        this.binary(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
      } else if (Array.isArray(v)) {
        this.length(v.length, 0x90, 16, -1, 0xdc, 0xdd);
        for (i = 0; i < v.length; i++) this.value(v[i], depth + 1);
      } else if (typeof v.toJSON === "function") {
        this.value(v.toJSON(), depth + 1);
      } else if (typeof Map !== "undefined" && v instanceof Map) {
        n = 0;
        v.forEach(function (item) {
          if (!skipped(item)) n++;
        });
        this.length(n, 0x80, 16, -1, 0xde, 0xdf);
        var self = this;
        v.forEach(function (item, key) {
          if (skipped(item)) return;
          self.value(typeof key === "number" || typeof key === "bigint" ? key : String(key), depth + 1);
          self.value(item, depth + 1);
        });
      } else {
        keys = Object.keys(v);
        n = 0;
        for (i = 0; i < keys.length; i++) if (!skipped(v[keys[i]])) n++;
        this.length(n, 0x80, 16, -1, 0xde, 0xdf);
        for (i = 0; i < keys.length; i++) {
          k = keys[i];
          if (skipped(v[k])) continue;
          this.string(k);
          this.value(v[k], depth + 1);
        }
      }
    }
  };

  function encode(value) {
    var w = new Writer();
    w.value(value, 0);
    return w.buf.slice(0, w.pos);
  }

  function Reader(bytes) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = 0;
  }

  /** The offset of the next `n` bytes, which must be there. */
  Reader.prototype.take = function (n) {
    var at = this.pos;
    if (n > this.bytes.length - at) throw MessagePackError("truncated at byte " + at);
    this.pos = at + n;
    return at;
  };

  Reader.prototype.uint = function (size) {
    var at = this.take(size);
    return size === 1 ? this.bytes[at] : size === 2 ? this.view.getUint16(at) : this.view.getUint32(at);
  };

  Reader.prototype.int64 = function (signed) {
    var at = this.take(8);
    var hi = signed ? this.view.getInt32(at) : this.view.getUint32(at);
    var v = hi * POW32 + this.view.getUint32(at + 4);
    if (Number.isSafeInteger(v) || !HAS_BIGINT || typeof this.view.getBigInt64 !== "function") return v;
    return signed ? this.view.getBigInt64(at) : this.view.getBigUint64(at);
  };

  Reader.prototype.string = function (n) {
    var at = this.take(n);
    var bytes = this.bytes;
    if (n <= 32) {
      var ascii = true;
      for (var i = at; i < at + n; i++) {
        if (bytes[i] > 0x7f) {
          ascii = false;
          break;
        }
      }
      if (ascii) return String.fromCharCode.apply(null, bytes.subarray(at, at + n));
    }
    if (!utf8) throw MessagePackError("no TextDecoder to read UTF-8");
    try {
      return utf8.decode(bytes.subarray(at, at + n));
    } catch (err) {
      throw MessagePackError("invalid UTF-8 in a string at byte " + at);
    }
  };

  Reader.prototype.array = function (n, depth) {
    if (n > this.bytes.length - this.pos) throw MessagePackError("truncated array at byte " + this.pos);
    var out = new Array(n);
    for (var i = 0; i < n; i++) out[i] = this.value(depth + 1);
    return out;
  };

  Reader.prototype.map = function (n, depth) {
    if (2 * n > this.bytes.length - this.pos) throw MessagePackError("truncated map at byte " + this.pos);
    var out = {};
    for (var i = 0; i < n; i++) {
      var at = this.pos;
      var key = this.value(depth + 1);
      var t = typeof key;
      if (t !== "string") {
        if (key === null || t === "number" || t === "bigint" || t === "boolean") key = String(key);
        else throw MessagePackError("a map key at byte " + at + " is not a string or a number");
      }
      var value = this.value(depth + 1);
      if (key === "__proto__") {
        Object.defineProperty(out, key, { value: value, enumerable: true, writable: true, configurable: true });
      } else {
        out[key] = value;
      }
    }
    return out;
  };

  Reader.prototype.value = function (depth) {
    if (depth > MAX_DEPTH) throw MessagePackError("nested deeper than " + MAX_DEPTH);
    var at = this.take(1);
    var b = this.bytes[at];
    if (b < 0x80) return b;
    if (b >= 0xe0) return b - 0x100;
    if (b < 0x90) return this.map(b & 0x0f, depth);
    if (b < 0xa0) return this.array(b & 0x0f, depth);
    if (b < 0xc0) return this.string(b & 0x1f);
    switch (b) {
      case 0xc0:
        return null;
      case 0xc2:
        return false;
      case 0xc3:
        return true;
      case 0xc4:
      case 0xc5:
      case 0xc6:
        var n = this.uint(1 << (b - 0xc4));
        var from = this.take(n);
        return this.bytes.slice(from, from + n);
      case 0xca:
        return this.view.getFloat32(this.take(4));
      case 0xcb:
        return this.view.getFloat64(this.take(8));
      case 0xcc:
      case 0xcd:
      case 0xce:
        return this.uint(1 << (b - 0xcc));
      case 0xcf:
        return this.int64(false);
      case 0xd0:
        return this.view.getInt8(this.take(1));
      case 0xd1:
        return this.view.getInt16(this.take(2));
      case 0xd2:
        return this.view.getInt32(this.take(4));
      case 0xd3:
        return this.int64(true);
      case 0xd9:
      case 0xda:
      case 0xdb:
        return this.string(this.uint(1 << (b - 0xd9)));
      case 0xdc:
      case 0xdd:
        return this.array(this.uint(b === 0xdc ? 2 : 4), depth);
      case 0xde:
      case 0xdf:
        return this.map(this.uint(b === 0xde ? 2 : 4), depth);
      default:
        // 0xc7-0xc9 ext 8/16/32, 0xd4-0xd8 fixext, 0xc1 never used
        throw MessagePackError(
          (b === 0xc1 ? "the unused type byte 0xc1" : "extension types are not supported (byte 0x" + b.toString(16) + ")") +
            " at byte " + at
        );
    }
  };

  function decode(data) {
    var bytes;
    if (data instanceof Uint8Array) bytes = data;
    else if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
    else if (data && ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    else throw new TypeError("MessagePack: decode takes an ArrayBuffer or a Uint8Array");
    var r = new Reader(bytes);
    var value = r.value(0);
    if (r.pos !== bytes.length) throw MessagePackError((bytes.length - r.pos) + " bytes after the value");
    return value;
  }

  var DEFAULTS = {
    reconnect: true,
    minDelay: 500, // ms, first reconnect delay (before jitter)
    maxDelay: 10000, // ms, backoff cap
    protocols: undefined, // WebSocket subprotocols to offer (a string or an array)
    token: undefined, // a JWT, or a function returning one: offered as "bearer.<token>" beside "fasthub"
    format: "json", // "json" | "msgpack" (offers "fasthub.msgpack"; JSON when the server selects "fasthub")
    requestTimeout: 10000, // ms, how long presence()/presenceStats() wait for their reply
    typingInterval: 1000, // ms, typing(room) sends at most one per room this often
    WebSocket: undefined, // WebSocket implementation (defaults to the global one)
  };

  var MSGPACK = "fasthub.msgpack";
  var SUBPROTOCOL = "fasthub";
  var TOKEN_PREFIX = "bearer.";

  /** An Error with the server's (or the client's) error `code`, and the error payload if any. */
  function requestError(code, message, payload) {
    var err = new Error(message || code);
    err.code = code;
    if (payload) err.payload = payload;
    return err;
  }

  class FastHubClient {
    /**
     * @param {string} url  ws:// or wss:// URL of the hub endpoint (e.g. "wss://host/ws")
     * @param {object} [options] {reconnect=true, minDelay=500, maxDelay=10000, protocols, token,
     *   format="json", requestTimeout=10000, typingInterval=1000, WebSocket}
     */
    constructor(url, options) {
      this.url = url;
      this.options = assign({}, DEFAULTS, options || {});
      if (this.options.format !== "json" && this.options.format !== "msgpack") {
        throw new TypeError('fasthub: format is "json" or "msgpack", not ' + String(this.options.format));
      }
      this.ws = null;
      this.connectionId = null;
      this.userId = null;
      this._listeners = Object.create(null);
      this._rooms = new Set(); // rooms we want to be in; rejoined after every reconnect
      this._pendingJoins = new Map(); // join id -> room (dropped from _rooms if the join fails)
      this._pendingPings = new Map(); // ping id -> send time
      this._requests = new Map(); // presence/presence_stats id -> {type, resolve, reject, timer}
      this._typingSent = new Map(); // room -> when typing() last sent one (ms)
      this.format = null; // what the open connection speaks: "json" | "msgpack" (null while closed)
      this.protocol = null; // the subprotocol the server selected ("" for none)
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
        var protocols = this._protocols();
        ws = protocols.length ? new Impl(this.url, protocols) : new Impl(this.url);
        ws.binaryType = "arraybuffer";
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
        self.protocol = ws.protocol || "";
        self.format = self.protocol === MSGPACK ? "msgpack" : "json";
        self._emit("open", { reconnected: reconnected, format: self.format, protocol: self.protocol });
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

    /**
     * The subprotocols to offer: "fasthub.msgpack" and "fasthub" (format "msgpack"; "fasthub" is
     * what an older server selects, as a browser fails the connection when the server selects
     * none), then the token's, then `protocols`.
     */
    _protocols() {
      var out = [];
      var add = function (p) {
        if (p && out.indexOf(p) === -1) out.push(String(p));
      };
      if (this.options.format === "msgpack") {
        add(MSGPACK);
        add(SUBPROTOCOL);
      }
      var token = typeof this.options.token === "function" ? this.options.token() : this.options.token;
      if (token) {
        add(SUBPROTOCOL);
        add(TOKEN_PREFIX + token);
      }
      var given = this.options.protocols;
      (Array.isArray(given) ? given : given ? [given] : []).forEach(add);
      return out;
    }

    /** Write one envelope in the connection's format. */
    _write(env) {
      this.ws.send(this.format === "msgpack" ? encode(env) : JSON.stringify(env));
    }

    _rejoin(only) {
      var self = this;
      this._pendingJoins.clear();
      this._rooms.forEach(function (room) {
        if (!only || only.has(room)) self._sendJoin(room);
      });
      this._publishes.forEach(function (p) {
        self._write(p.env); // not acked before the drop: again, same key
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

    /** A frame -> its envelope, or null when it is application data (emitted as "text"/"binary"). */
    _envelopeOf(data) {
      var env;
      if (typeof data === "string") {
        if (this.format !== "msgpack") {
          try {
            env = JSON.parse(data);
          } catch (err) {
            env = null;
          }
          if (env && typeof env === "object" && !Array.isArray(env)) return env;
        }
        this._emit("text", data); // MessagePack: text frames are the application's; JSON: not an envelope
        return null;
      }
      var bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : ArrayBuffer.isView(data) ? data : null;
      if (bytes === null) return null; // a Blob: only from a WebSocket that ignores binaryType
      if (this.format !== "msgpack") {
        this._emit("binary", bytes); // JSON: a binary frame is the application's bytes
        return null;
      }
      try {
        env = decode(bytes);
      } catch (err) {
        if (typeof console !== "undefined") console.warn("fasthub: ignoring a frame that is not MessagePack:", err.message);
        return null;
      }
      if (env instanceof Uint8Array) {
        this._emit("binary", env);
        return null;
      }
      if (env && typeof env === "object" && !Array.isArray(env)) return env;
      if (typeof console !== "undefined") console.warn("fasthub: ignoring a MessagePack frame that is not a map or bin");
      return null;
    }

    _handleMessage(data) {
      var env = this._envelopeOf(data);
      if (env === null) return;
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
      } else if (env.id != null && this._requests.has(env.id) && (env.type === "error" || env.type === this._requests.get(env.id).type)) {
        var request = this._requests.get(env.id);
        this._requests.delete(env.id);
        clearTimeout(request.timer);
        if (env.type === "error") {
          var p = env.payload && typeof env.payload === "object" ? env.payload : {};
          request.reject(requestError(String(p.code || "error"), p.message, p));
        } else {
          request.resolve(env.payload || {});
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
      this.format = null;
      this.protocol = null;
      this._pendingPings.clear();
      this._typingSent.clear(); // the server's throttle is per connection
      var requests = Array.from(this._requests.values());
      this._requests.clear();
      requests.forEach(function (r) {
        clearTimeout(r.timer);
        r.reject(requestError("disconnected", "fasthub: the connection closed before the reply"));
      });
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
      this._write(env);
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
        if (self.connected) self._write(env);
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
      this._typingSent.delete(room);
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

    /**
     * Send application bytes (an ArrayBuffer or a view such as Uint8Array) to the server's
     * `on_binary` handler: a binary frame on a JSON connection, a MessagePack bin on a
     * MessagePack one. Throws if the socket is not open.
     */
    sendBytes(data) {
      var bytes;
      if (data instanceof Uint8Array) bytes = data;
      else if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
      else if (data && ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      else throw new TypeError("fasthub: sendBytes takes an ArrayBuffer or a typed array");
      if (!this.connected) throw new Error("fasthub: not connected");
      this.ws.send(this.format === "msgpack" ? encode(bytes) : bytes);
    }

    _request(env, options) {
      var self = this;
      var timeout = options && options.timeout != null ? options.timeout : this.options.requestTimeout;
      return new Promise(function (resolve, reject) {
        if (!self.connected) {
          reject(requestError("not_connected", "fasthub: not connected"));
          return;
        }
        var id = self.send(env);
        var timer = setTimeout(function () {
          if (self._requests.delete(id)) reject(requestError("timeout", "fasthub: no " + env.type + " reply in " + timeout + " ms"));
        }, timeout);
        self._requests.set(id, { type: env.type, resolve: resolve, reject: reject, timer: timer });
      });
    }

    /**
     * Who is in a room, on every node: a Promise of {presence: {<user id>: {connections, info?}},
     * num_users, num_connections}. Rejected with an Error whose `code` is the server's
     * ("forbidden", "unavailable", "invalid_room"...) or "timeout" / "disconnected" / "not_connected".
     * @param {object} [options] {timeout: ms (default requestTimeout)}
     */
    presence(room, options) {
      return this._request({ type: "presence", room: String(room) }, options);
    }

    /** A Promise of a room's counts {num_users, num_connections}; rejected like presence(). */
    presenceStats(room, options) {
      return this._request({ type: "presence_stats", room: String(room) }, options);
    }

    /**
     * Tell the room's other members this user is typing. Call it on every keystroke: it sends at
     * most one per room every `typingInterval` ms (the server relays at most one per 2 s) and
     * returns true when it sent one (false when throttled or not connected). Fire and forget.
     */
    typing(room) {
      room = String(room);
      if (!this.connected) return false;
      var t = now();
      var last = this._typingSent.get(room);
      if (last !== undefined && t - last < this.options.typingInterval) return false;
      this._typingSent.set(room, t);
      this._write({ type: "typing", room: room });
      return true;
    }
  }

  FastHubClient.newId = newId;
  FastHubClient.msgpack = { encode: encode, decode: decode };
  return FastHubClient;
});
