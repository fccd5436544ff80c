// Sends events with the BMS app's installed Netlify client, exactly as its
// netlify/functions/utils/insights-async-client.cjs calls it:
//   new AsyncWorkloadsClient({ baseUrl: process.env.URL }).send(name, { data, priority, delayUntil })
// stdin: a JSON array of calls [{eventName, options, chain?}]; chain, when
// given, is the event chain the send is made from (the client keeps it in
// AsyncLocalStorage while a workload runs). stdout: one JSON line per call,
// the client's own answer {sendStatus, eventId}, after "RESULT " (the
// client logs to stdout too).
//
// The package reads the global `Netlify` that Netlify's Functions runtime
// defines (Netlify.env.get, Netlify.context). A function process run
// outside Netlify defines it the same way, with no Netlify context, so the
// client sends every event to the router at its baseUrl.
globalThis.Netlify ??= { env: { get: (k) => process.env[k] }, context: null };

const { AsyncWorkloadsClient } = require('@netlify/async-workloads');

async function main() {
  let input = '';
  for await (const chunk of process.stdin) input += chunk;
  const calls = JSON.parse(input);
  const client = new AsyncWorkloadsClient({ baseUrl: process.env.URL });
  for (const call of calls) {
    if (call.chain) {
      const store = { eventChain: [...call.chain] };
      globalThis._getAsyncAWLStorage = () => ({ getStore: () => store });
    } else {
      delete globalThis._getAsyncAWLStorage;
    }
    const res = await client.send(call.eventName, call.options);
    process.stdout.write('RESULT ' + JSON.stringify(res) + '\n');
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
