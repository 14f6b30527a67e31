// The minimal room hub on Bun (uWebSockets in Zig/C++ under Bun.serve).
//
//     npm install --prefix bench/peers          # brings the bun binary (package.json pins it)
//     bench/peers/node_modules/.bin/bun bench/peers/bun_hub.js --port 8000 [--host 127.0.0.1]
//
// Serves ws://HOST:PORT/ws and GET /ws/stats. Rooms are uWebSockets' pub/sub topics:
// ws.subscribe(room) joins, server.publish(room, msg) hands the message, serialized once, to uWS,
// which writes it to every subscriber (server.publish includes the sender; ws.publish would skip
// it). uWS drops a published message for a subscriber whose buffer is over backpressureLimit
// (16 MiB by default); the hub must not lose messages, so the limit is set far above anything
// a benchmark queues, as the other peers' buffers are unbounded. The protocol is described in
// bench/peers/README.md.

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
};
const host = opt("--host", "127.0.0.1");
const port = Number(opt("--port", "8000"));

const CONNECTED = JSON.stringify({ type: "system", payload: { event: "connected" } });
const PONG = JSON.stringify({ type: "pong" });
const BAD = JSON.stringify({ type: "error", payload: { code: "invalid_message" } });
const NOT_MEMBER = JSON.stringify({ type: "error", payload: { code: "not_member" } });

const members = new Map(); // room -> member count
let connections = 0;
let ids = 0;

function leave(data, room) {
  data.joined.delete(room);
  const left = members.get(room) - 1;
  if (left) members.set(room, left);
  else members.delete(room);
}

const server = Bun.serve({
  hostname: host,
  port,
  fetch(req, server) {
    const url = new URL(req.url);
    if (url.pathname === "/ws") {
      if (server.upgrade(req, { data: { cid: `c${++ids}`, joined: new Set() } })) return undefined;
      return new Response("expected a WebSocket upgrade", { status: 400 });
    }
    if (url.pathname === "/ws/stats") {
      return Response.json({ connections, rooms: members.size });
    }
    return new Response("not found", { status: 404 });
  },
  websocket: {
    perMessageDeflate: false,
    maxPayloadLength: 1 << 20,
    idleTimeout: 0, // no idle timeout: load-generator subscribers only receive
    backpressureLimit: 2 ** 31 - 1, // never drop a published message
    closeOnBackpressureLimit: false,
    sendPings: false,
    open(ws) {
      connections++;
      ws.sendText(CONNECTED);
    },
    message(ws, message) {
      let msg;
      try {
        msg = JSON.parse(typeof message === "string" ? message : message.toString());
      } catch {
        ws.sendText(BAD);
        return;
      }
      if (msg === null || typeof msg !== "object" || typeof msg.type !== "string") {
        ws.sendText(BAD);
        return;
      }
      const room = msg.room;
      const data = ws.data;
      switch (msg.type) {
        case "room_message":
          if (!data.joined.has(room)) {
            ws.sendText(NOT_MEMBER);
            return;
          }
          server.publish(room, JSON.stringify({ type: "room_message", room, from: data.cid, payload: msg.payload }));
          return;
        case "join_room":
          if (typeof room !== "string") break;
          if (!data.joined.has(room)) {
            data.joined.add(room);
            members.set(room, (members.get(room) || 0) + 1);
            ws.subscribe(room);
          }
          ws.sendText(JSON.stringify({ type: "system", room, payload: { event: "joined", members: members.get(room) } }));
          return;
        case "leave_room":
          if (typeof room !== "string") break;
          if (data.joined.has(room)) {
            leave(data, room);
            ws.unsubscribe(room);
          }
          return;
        case "ping":
          ws.sendText(PONG);
          return;
      }
      ws.sendText(BAD);
    },
    close(ws) {
      connections--;
      for (const room of [...ws.data.joined]) leave(ws.data, room); // uWS has dropped the subscriptions
    },
  },
});

console.log(`bun hub on ws://${host}:${server.port}/ws`);
