/**
 * A minimal FHIR endpoint for benchmarks, run as a child process (bench/pipeline.bench.ts): it advertises and
 * accepts transactions, answers each entry `201 Created` with a location, and counts the entries it received
 * and the distinct resources they wrote (by conditional URL: a resource sent again counts once). It stores
 * nothing else: the point is to measure trialbridge's cost, not a server's. Listens on 127.0.0.1 only.
 * IPC: the parent sends 'entries' or 'reset' and gets `{ entries, resources, cpuMs }` back (cpuMs: this process's
 * CPU time so far); the port is sent once listening.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { TRANSACTION_CAPABILITY } from './transaction-capability.ts';

let entries = 0;
const resources = new Set<string>();

const server = createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    if (req.method === 'GET' && req.url?.endsWith('/metadata')) {
      res.writeHead(200, { 'content-type': 'application/fhir+json' }).end(TRANSACTION_CAPABILITY);
      return;
    }
    if (req.method !== 'POST') {
      res.writeHead(405, { 'content-type': 'application/fhir+json' }).end('{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-supported"}]}');
      return;
    }
    const bundle = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { entry?: { resource?: { resourceType?: string }; request?: { url?: string } }[] };
    for (const e of bundle.entry ?? []) if (e.request?.url) resources.add(e.request.url);
    const answers = (bundle.entry ?? []).map((e, i) => ({
      response: { status: '201 Created', location: `${e.resource?.resourceType ?? 'Resource'}/${entries + i + 1}/_history/1` },
    }));
    entries += answers.length;
    res.writeHead(200, { 'content-type': 'application/fhir+json' }).end(JSON.stringify({ resourceType: 'Bundle', type: 'transaction-response', entry: answers }));
  });
});

server.listen(0, '127.0.0.1', () => process.send?.({ port: (server.address() as AddressInfo).port }));
process.on('message', (command) => {
  if (command === 'reset') {
    entries = 0;
    resources.clear();
  }
  const cpu = process.cpuUsage();
  process.send?.({ entries, resources: resources.size, cpuMs: (cpu.user + cpu.system) / 1000 });
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
// The parent gone, nothing is left to serve.
process.on('disconnect', () => process.exit(0));
