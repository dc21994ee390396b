import { readFile } from 'node:fs/promises';
import { parse } from 'yaml';
import { describe, expect, it } from 'vitest';
import { loadDestinations } from '../src/delivery/destinations.ts';

interface ComposeService {
  command?: string[];
  depends_on?: Record<string, { condition: string }>;
  stop_signal?: string;
}

describe('docker-compose.yml', () => {
  it('runs Redis durable and without eviction, serve and worker on it, and its destinations file loads', async () => {
    const compose = parse(await readFile('docker-compose.yml', 'utf8'), { merge: true }) as { services: Record<string, ComposeService> };
    const { redis, serve, worker } = compose.services;
    expect(redis.command).toEqual(expect.arrayContaining(['--appendonly', 'yes', '--maxmemory-policy', 'noeviction']));
    for (const [name, service] of Object.entries({ serve, worker })) {
      expect(service.command?.slice(0, 3), name).toEqual(['node', 'src/cli/main.ts', name]);
      expect(service.command, name).toContain('deploy/destinations.compose.yaml');
      expect(service.depends_on?.redis?.condition, name).toBe('service_healthy');
      expect(service.stop_signal, name).toBe('SIGTERM');
    }
    const [hospital] = loadDestinations('deploy/destinations.compose.yaml', {});
    expect(hospital.baseUrl).toBe('http://hospital-fhir:8080/fhir');
    expect(hospital.retry.requestAttempts).toBe(3);
  });
});
