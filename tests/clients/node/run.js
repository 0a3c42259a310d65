// Drive the official Node SDK (`mixpanel`) for tests/clients/test_node_sdk.py.
//
// Reads one JSON document on stdin:
//   {"token": "...", "config": {host, port, protocol, secret, verbose, ...},
//    "credentials": ["username", "secret", "project_id"] | null,
//    "ops": [{"op": "track", "event": "...", "properties": {...}},
//            {"op": "track_batch", "events": [...]},
//            {"op": "import", "event": "...", "time": <ms>, "properties": {...}},
//            {"op": "import_batch", "events": [...], "dates": true}]}
// Runs the operations one after another and prints one JSON line:
//   {"results": [{"op": "...", "errors": [<message>, ...]}, ...]}
// With "dates": true, numeric `time` properties are passed as JavaScript Date objects
// (the SDK then sends them as milliseconds since the epoch).
"use strict";

const Mixpanel = require("mixpanel");

function readStdin() {
  return new Promise((resolve, reject) => {
    let text = "";
    process.stdin.setEncoding("utf8");
    process.stdin.on("data", (chunk) => (text += chunk));
    process.stdin.on("end", () => resolve(text));
    process.stdin.on("error", reject);
  });
}

function messages(err) {
  if (!err) return [];
  const list = Array.isArray(err) ? err : [err];
  return list.filter(Boolean).map((e) => String(e && e.message ? e.message : e));
}

function withDates(events) {
  return events.map((e) => ({
    event: e.event,
    properties: { ...e.properties, time: new Date(e.properties.time) },
  }));
}

function run(client, op) {
  return new Promise((resolve) => {
    const done = (err) => resolve({ op: op.op, errors: messages(err) });
    try {
      switch (op.op) {
        case "track":
          client.track(op.event, op.properties || {}, done);
          break;
        case "track_batch":
          client.track_batch(op.events, done);
          break;
        case "import":
          client.import(op.event, op.dates ? new Date(op.time) : op.time, op.properties || {}, done);
          break;
        case "import_batch":
          client.import_batch(op.dates ? withDates(op.events) : op.events, done);
          break;
        default:
          done(new Error("unknown op " + op.op));
      }
    } catch (e) {
      done(e); // the SDK throws synchronously, e.g. a secret over plain http
    }
  });
}

async function main() {
  const spec = JSON.parse(await readStdin());
  const config = { keepAlive: false, ...spec.config };
  if (spec.credentials) {
    const [username, secret, projectId] = spec.credentials;
    config.credentials = new Mixpanel.ServiceAccountCredentials(username, secret, projectId);
  }
  const client = Mixpanel.init(spec.token, config);
  const results = [];
  for (const op of spec.ops) {
    results.push(await run(client, op));
  }
  process.stdout.write(JSON.stringify({ results }) + "\n");
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack ? e.stack : e) + "\n");
  process.exit(2);
});
