// Extract → fan-out transform → load, with a load that fails once and is retried.
//
// The JavaScript twin of examples/etl: the same parameters, tasks, policies and result.
// Its log writes the total with thousands separators, by `humanize-plus` (CommonJS) from npm.

import Humanize from "humanize-plus"; // from npm (package.json): bundled into the component by `host build`
import { flow, info, runInfo, task, waitAll } from "weir-sdk";

export const extract = task(
  { timeout: "30s", description: "Reads `rows` rows from the source." },
  function extract(rows) {
    return Array.from({ length: rows }, (_, i) => ({ id: i, value: (i * 7919) % 1000 }));
  },
);

export const transform = task(
  { retries: 2, retryDelay: "10ms", description: "Cleans one chunk of rows and sums it." },
  function transform(chunk) {
    return { count: chunk.length, sum: chunk.reduce((sum, row) => sum + row.value * 2, 0) };
  },
);

export const load = task(
  {
    retries: 3,
    retryDelay: "50ms",
    description: "Writes the totals to the warehouse, whose connection drops on the first try.",
  },
  function load(summaries) {
    if (runInfo().attempt === 1) {
      throw new Error("warehouse connection reset (simulated)");
    }
    return summaries.reduce((total, s) => total + s.sum, 0);
  },
);

export const etl = flow(
  { description: "Extracts `rows` rows, transforms them in parallel chunks and loads the totals." },
  function etl(rows = 100, chunk_size = 100) {
    if (chunk_size < 1) {
      throw new Error("chunk_size must be at least 1");
    }
    info(`extracting ${rows} rows`);
    const data = extract(rows);
    const chunks = [];
    for (let i = 0; i < data.length; i += chunk_size) {
      chunks.push(data.slice(i, i + chunk_size));
    }
    info(`transforming ${chunks.length} chunks of up to ${chunk_size} rows`);
    const summaries = waitAll(transform.map(chunks));
    info(`loading ${summaries.length} summaries`);
    const total = load(summaries);
    info(`loaded: total ${Humanize.formatNumber(total)}`);
    return { rows, chunks: summaries.length, total };
  },
);
