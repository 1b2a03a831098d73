// chat21-server 0.2.21's observer, unchanged from the npm registry, for inboxd's side-by-side
// benchmark (`inboxd-bench versus`): its MongoDB calls are answered in memory, as no MongoDB
// server can run here, so what is measured is the observer's own work plus a store that costs
// next to nothing (inboxd's rows pay for a real SQLite or PostgreSQL).
//
// Environment: BENCH_AMQP_URL, BENCH_APP, BENCH_PREFETCH (set by inboxd-bench).
'use strict';

const mongodb = require('mongodb');

// The calls chatdb/index.js makes: createIndex, updateOne(filter, {$set}, {upsert}, cb),
// findOne(filter, cb) and find(filter).limit().sort().toArray(cb).
class Collection {
  constructor() { this.docs = new Map(); }
  createIndex() { return Promise.resolve(); }
  updateOne(filter, update, _options, callback) {
    const key = JSON.stringify(filter);
    this.docs.set(key, Object.assign(this.docs.get(key) || { ...filter }, update.$set));
    callback(null, { result: { ok: 1 } });
  }
  findOne(filter, callback) { callback(null, this.docs.get(JSON.stringify(filter)) || null); }
  find(filter) {
    const matches = [...this.docs.values()].filter((doc) => Object.entries(filter).every(([k, v]) => doc[k] === v));
    const cursor = { limit: () => cursor, sort: () => cursor, toArray: (callback) => callback(null, matches) };
    return cursor;
  }
}
const collections = new Map();
const db = { collection: (name) => collections.get(name) || collections.set(name, new Collection()).get(name) };
mongodb.MongoClient.connect = async () => ({ db: () => db });

const { observer } = require('@chat21/chat21-server');
observer.setPrefetchMessages(Number(process.env.BENCH_PREFETCH || 10));
observer.startServer({
  app_id: process.env.BENCH_APP,
  rabbitmq_uri: process.env.BENCH_AMQP_URL,
  mongodb_uri: 'mongodb://in-memory',
}).catch((err) => { console.error(err); process.exit(1); });
