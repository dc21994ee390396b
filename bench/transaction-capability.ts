/** The CapabilityStatement of the benchmarks' stand-in FHIR endpoints: a server that takes transactions. */
export const TRANSACTION_CAPABILITY = JSON.stringify({
  resourceType: 'CapabilityStatement',
  status: 'active',
  kind: 'instance',
  fhirVersion: '4.0.1',
  format: ['json'],
  rest: [{ mode: 'server', interaction: [{ code: 'transaction' }, { code: 'batch' }] }],
});
