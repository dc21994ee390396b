// Writes mappings/mapping.schema.json from src/mapping/schema.ts (the one source); a test keeps them equal.
import { writeFile } from 'node:fs/promises';
import { PUBLISHED_SCHEMA_FILE, publishedMappingSchema } from '../src/mapping/schema.ts';

await writeFile(PUBLISHED_SCHEMA_FILE, JSON.stringify(publishedMappingSchema(), null, 2) + '\n');
console.log(`wrote ${PUBLISHED_SCHEMA_FILE}`);
