#!/usr/bin/env node
// The CLI is TypeScript run by Node 22's built-in type stripping; no build step.
await import('../src/cli/main.ts');
