// Drives chat21's own JavaScript clients, unchanged from the npm registry, for inboxd's e2e tests
// (tests/src/js.rs): one JSON command per line on stdin, one JSON answer or event per line on stdout.
//
// Commands: {"id", "op", ...}. Answers: {"id", "ok": true, "result"} or {"id", "ok": false, "error"}.
// - "client.connect" {options, userId, jwt}: a chat21client.js Chat21Client (what the web widget and
//   the ionic app run) connected over MQTT, answered once its inbox subscription is acknowledged;
//   what its handlers see arrives as events
//   {"event": "<handler name>", "args": [...]}.
// - "client.call" {method, args}: calls a Chat21Client method with args and a final callback;
//   the result is the list of arguments the callback got.
// - "sdk.init" {config}: a @chat21/chat21-node-sdk client (what Tiledesk's server runs).
// - "sdk.call" {path, args}: calls e.g. "groups.create"; the result is what its promise resolves.
// The libraries' own output goes to stderr, so stdout carries only this protocol.
'use strict';

global.XMLHttpRequest = require('xmlhttprequest').XMLHttpRequest;
const readline = require('readline');
const { Chat21Client } = require('@chat21/chat21-server/mqttclient/chat21client.js');
const Chat21 = require('@chat21/chat21-node-sdk');

const out = process.stdout.write.bind(process.stdout);
console.log = console.info = console.debug = console.warn = console.error;
// Loggers that write to the stream itself (the node SDK's winston) go to stderr too.
process.stdout.write = process.stderr.write.bind(process.stderr);
const send = (value) => out(JSON.stringify(value, plain) + '\n');

// Errors and buffers as JSON can read them.
function plain(_key, value) {
  if (value instanceof Error) return { error: value.message };
  if (Buffer.isBuffer(value)) return value.toString();
  return value;
}

const HANDLERS = [
  'onConversationAdded', 'onConversationUpdated', 'onConversationDeleted',
  'onArchivedConversationAdded', 'onArchivedConversationDeleted',
  'onMessageAdded', 'onMessageUpdated', 'onGroupUpdated',
];

let client = null;
let sdk = null;

function connect(command) {
  client = new Chat21Client(command.options);
  for (const handler of HANDLERS) {
    client[handler]((...args) => send({ event: handler, args }));
  }
  // chat21client.js calls back on CONNACK, when its inbox SUBSCRIBE is sent but not yet
  // acknowledged: a message published into the inbox right then can beat the broker's binding.
  // Subscribing to the same topic again and waiting for that SUBACK (MQTT answers in order)
  // resolves once the client's own subscription is in place.
  return new Promise((resolve, reject) => client.connect(command.userId, command.jwt, () => {
    client.client.subscribe(client.topic_inbox, (err) => (err ? reject(err) : resolve(null)));
  }));
}

function call(command) {
  if (!client) throw new Error('client.connect first');
  const method = client[command.method];
  if (typeof method !== 'function') throw new Error(`Chat21Client has no method ${command.method}`);
  return new Promise((resolve) => method.call(client, ...(command.args || []), (...args) => resolve(args)));
}

function sdkCall(command) {
  if (!sdk) throw new Error('sdk.init first');
  const [group, name] = command.path.split('.');
  const method = sdk[group] && sdk[group][name];
  if (typeof method !== 'function') throw new Error(`the node SDK has no ${command.path}`);
  return method(...(command.args || []));
}

const OPS = {
  'client.connect': connect,
  'client.call': call,
  'sdk.init': (command) => { sdk = Chat21(command.config); return null; },
  'sdk.call': sdkCall,
};

readline.createInterface({ input: process.stdin }).on('line', async (line) => {
  let command;
  try {
    command = JSON.parse(line);
    const op = OPS[command.op];
    if (!op) throw new Error(`unknown op ${command.op}`);
    send({ id: command.id, ok: true, result: await op(command) });
  } catch (err) {
    send({ id: command && command.id, ok: false, error: String((err && err.stack) || err) });
  }
}).on('close', () => process.exit(0));
