/**
 * Prometheus metrics on a registry of their own (so several apps in one process do not collide):
 * default process metrics, BullMQ job counts by queue and state (read at scrape time with getJobCounts),
 * deliveries by destination and outcome (from the delivery queues' completed events, so deliveries made by
 * workers in any process are counted — each API process counts all of them, from the time it started),
 * destinations' backoff incidents and concurrency limits (read from Redis, shared by all workers), and an
 * HTTP request latency histogram.
 */
import { QueueEvents, type Queue } from 'bullmq';
import { pipelineRedisOptions } from '../queue/pipeline.ts';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Logger } from '../log.ts';
import { pacingMetrics } from '../delivery/pacing.ts';
import type { QueuePipeline } from '../queue/pipeline.ts';
import type { DeliveryJobResult } from '../queue/stages.ts';

const JOB_STATES = ['waiting', 'active', 'delayed', 'completed', 'failed', 'prioritized', 'waiting-children'] as const;

export interface ApiMetrics {
  readonly registry: Registry;
  readonly requestDuration: Histogram<'method' | 'route' | 'status'>;
  readonly deliveries: Counter<'destination' | 'outcome'>;
  /** Resolves when the delivery event listeners are connected. */
  ready(): Promise<void>;
  close(): Promise<void>;
}

export function createMetrics(pipeline: QueuePipeline, logger?: Logger): ApiMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const destinations = pipeline.context.config.destinations.map((d) => d.name);
  const queues: Queue[] = [pipeline.mappingQueue, ...destinations.map((d) => pipeline.deliveryQueue(d))];

  new Gauge({
    name: 'trialbridge_queue_jobs',
    help: 'BullMQ jobs by queue and state',
    labelNames: ['queue', 'state'] as const,
    registers: [registry],
    async collect() {
      this.reset();
      for (const q of queues) {
        const counts = await q.getJobCounts(...JOB_STATES);
        for (const state of JOB_STATES) this.set({ queue: q.name, state }, counts[state] ?? 0);
      }
    },
  });
  const deliveries = new Counter({
    name: 'trialbridge_deliveries_total',
    help: 'Delivery jobs finished, by destination and outcome (delivered, dead-lettered)',
    labelNames: ['destination', 'outcome'] as const,
    registers: [registry],
  });
  for (const d of destinations) for (const outcome of ['delivered', 'dead-lettered']) deliveries.inc({ destination: d, outcome }, 0);
  // Backoff incidents and current concurrency limits of every destination, from the state the workers share.
  pacingMetrics(registry, pipeline.context.config.destinations.map((d) => pipeline.context.pacer(d)));
  const requestDuration = new Histogram({
    name: 'trialbridge_http_request_duration_seconds',
    help: 'HTTP request latency by method, route and status',
    labelNames: ['method', 'route', 'status'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [registry],
  });

  const connection = pipeline.redis.options;
  const events = destinations.map((d) => {
    const ev = new QueueEvents(pipeline.deliveryQueue(d).name, {
      // The pipeline's reconnection settings: back within a second of Redis, not BullMQ's default of up to 20 s.
      connection: pipelineRedisOptions({ host: connection.host, port: connection.port, username: connection.username, password: connection.password, db: connection.db, ...(connection.tls ? { tls: { ...connection.tls } } : {}) }),
      prefix: pipeline.names.prefix,
    });
    ev.on('error', (error) => (logger ? logger.error({ err: error, destination: d }, 'delivery events failed') : console.error(`trialbridge api metrics ${d}: ${error.message}`)));
    ev.on('completed', ({ returnvalue }) => {
      const value = (typeof returnvalue === 'string' ? safeParse(returnvalue) : returnvalue) as Partial<DeliveryJobResult> | undefined;
      deliveries.inc({ destination: d, outcome: value?.outcome ?? 'unknown' });
    });
    return ev;
  });

  return {
    registry,
    requestDuration,
    deliveries,
    ready: async () => {
      await Promise.all(events.map((e) => e.waitUntilReady()));
    },
    close: async () => {
      await Promise.all(events.map((e) => e.close()));
    },
  };
}

function safeParse(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
