import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ResearchStudy } from '@medplum/fhirtypes';
import { FhirClient } from '../delivery/client.ts';
import { startEmbeddedFhirServer, type EmbeddedFhirServer } from '../delivery/embedded-server.ts';
import { readStudy, StudyNotFoundError } from './fhir-source.ts';

/** The report's searches carry values escaped: a `,` in a study identifier is no OR. */
let server: EmbeddedFhirServer;
let client: FhirClient;
const SYSTEM = 'urn:trialbridge:studies';

const study = (value: string): ResearchStudy => ({ resourceType: 'ResearchStudy', status: 'active', identifier: [{ system: SYSTEM, value }] });

beforeAll(async () => {
  server = await startEmbeddedFhirServer();
  client = new FhirClient({ baseUrl: server.baseUrl });
  for (const value of ['A', 'B', 'A,B']) await client.post('ResearchStudy', study(value));
});

afterAll(async () => {
  await server?.close();
});

describe('readStudy escapes the identifier it searches', () => {
  it('finds the study whose value holds a comma, not the two studies the comma would OR together', async () => {
    const source = await readStudy(client, `${SYSTEM}|A,B`);
    expect(source.study.identifier?.[0].value).toBe('A,B');
  });

  it('a value with a comma that no study has matches none (unescaped it would match A and B)', async () => {
    await expect(readStudy(client, `${SYSTEM}|B,A`)).rejects.toThrow(StudyNotFoundError);
    await expect(readStudy(client, `${SYSTEM}|B,A`)).rejects.toThrow(/^no ResearchStudy/);
  });
});
