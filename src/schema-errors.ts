import type { ErrorObject } from 'ajv';

/**
 * An ajv error in the words of a config file's author: the key path (an unknown key's own name included)
 * and a plain message for the keywords every config schema of trialbridge uses. Callers word the rest.
 */
export function describeSchemaError(error: ErrorObject): { path: string[]; message: string } {
  const path = error.instancePath
    .split('/')
    .slice(1)
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
  let message = error.message ?? 'is not valid';
  if (error.keyword === 'additionalProperties') {
    const extra = (error.params as { additionalProperty: string }).additionalProperty;
    path.push(extra);
    message = `unknown key '${extra}'`;
  } else if (error.keyword === 'required') {
    message = `missing required key '${(error.params as { missingProperty: string }).missingProperty}'`;
  } else if (error.keyword === 'enum') {
    message = `must be one of ${(error.params as { allowedValues: unknown[] }).allowedValues.join(', ')}`;
  }
  return { path, message };
}
