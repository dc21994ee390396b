import { realpathSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { Ajv, type ErrorObject } from 'ajv';
import { isMap, isScalar, LineCounter, parseDocument, type Document } from 'yaml';
import { MappingError, type MappingIssue } from './errors.ts';
import { mappingSchema } from './schema.ts';
import type { MappingSpec } from './types.ts';
import { describeSchemaError } from '../schema-errors.ts';

/** A YAML file of the `extends` chain, kept to place errors on lines. */
interface MappingLayer {
  readonly path: string;
  readonly doc: Document;
  readonly lines: LineCounter;
  readonly data: Record<string, unknown>;
}

export interface LoadedMapping {
  readonly spec: MappingSpec;
  /** Absolute path of the site mapping file. */
  readonly path: string;
  /** Files of the chain, site file first; used to resolve relative paths and place errors. */
  readonly layers: readonly { path: string; data: Record<string, unknown> }[];
  /** Finds the file and line that define a key path (site file first, then its bases). */
  locate(path: readonly (string | number)[]): { file: string; line?: number };
  /** The line of the site file nearest to a key path: where a key the site must add goes. */
  locateSite(path: readonly (string | number)[]): { file: string; line?: number };
  /** The base file and line that define a key path, or undefined when no base does. */
  locateBase(path: readonly (string | number)[]): { file: string; line?: number } | undefined;
}

const ajv = new Ajv({ allErrors: true, strict: false });
const validateSpec = ajv.compile(mappingSchema);

function displayPath(path: string): string {
  const rel = relative(process.cwd(), path);
  return rel && !rel.startsWith('..') && !isAbsolute(rel) ? rel : path;
}

/** Largest mapping file read: a mapping is configuration, a megabyte of it is a mistake or an attack. */
export const MAX_MAPPING_BYTES = 1024 * 1024;
/** Aliases a mapping file may expand (YAML's "billion laughs" expands a few lines into gigabytes). */
export const MAX_YAML_ALIASES = 100;
/** Files in one `extends` chain. */
const MAX_EXTENDS_DEPTH = 16;

async function readLayer(path: string): Promise<MappingLayer> {
  let text: string;
  try {
    const size = (await stat(path)).size;
    if (size > MAX_MAPPING_BYTES) {
      throw new MappingError([{ file: displayPath(path), key: '', message: `mapping file is ${size} bytes, over the limit of ${MAX_MAPPING_BYTES}` }]);
    }
    text = await readFile(path, 'utf8');
  } catch (err) {
    if (err instanceof MappingError) throw err;
    throw new MappingError([{ file: displayPath(path), key: '', message: `cannot read mapping file (${(err as NodeJS.ErrnoException).code})` }]);
  }
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: true, merge: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new MappingError(
      doc.errors.map((e) => ({
        file: displayPath(path),
        line: e.linePos?.[0]?.line,
        key: '',
        message: `YAML syntax: ${e.message.split('\n')[0]}`,
      })),
    );
  }
  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: MAX_YAML_ALIASES });
  } catch (err) {
    // The yaml package refuses to expand past maxAliasCount with a ReferenceError: an alias bomb.
    throw new MappingError([
      { file: displayPath(path), key: '', message: `YAML aliases refused: ${(err as Error).message} (more than ${MAX_YAML_ALIASES} alias expansions)` },
    ]);
  }
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    throw new MappingError([{ file: displayPath(path), key: '', message: 'a mapping file must be a YAML mapping (key: value)' }]);
  }
  return { path, doc, lines, data: data as Record<string, unknown> };
}

/**
 * The base a layer `extends`: a base that cannot be read is reported on the `extends` line that names it, since
 * that is the line to fix (a bare "cannot read mapping file" sent people looking at the file they had passed).
 */
async function readBase(child: MappingLayer, path: string): Promise<MappingLayer> {
  try {
    return await readLayer(path);
  } catch (err) {
    if (!(err instanceof MappingError) || !err.issues[0]?.message.startsWith('cannot read mapping file')) throw err;
    const code = /\((\w+)\)$/.exec(err.issues[0].message)?.[1];
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'it is a directory' : code;
    const named = String(child.data.extends);
    throw new MappingError([
      {
        file: displayPath(child.path),
        line: lineOf(child, ['extends']),
        key: 'extends',
        message: `cannot read the base mapping '${named}' this file extends (${displayPath(path)}: ${why}); the path is relative to ${displayPath(dirname(child.path))}`,
      },
    ]);
  }
}

/** Deep merge of a site layer over its base: objects merge key by key, `null` removes, anything else replaces. */
export function mergeLayers(base: unknown, over: unknown): unknown {
  if (over === undefined) return base;
  if (isPlainObject(base) && isPlainObject(over)) {
    const out: Record<string, unknown> = { ...base };
    for (const [key, value] of Object.entries(over)) {
      if (value === null) delete out[key];
      else out[key] = mergeLayers(base[key], value);
    }
    return out;
  }
  return over;
}

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function lineOf(layer: MappingLayer, path: readonly (string | number)[]): number | undefined {
  // Walk down to the deepest node the layer has on this path, so an error on a missing key points at its parent.
  for (let depth = path.length; depth >= 0; depth--) {
    const node = depth === 0 ? layer.doc.contents : layer.doc.getIn(path.slice(0, depth), true);
    if (node && (isMap(node) || isScalar(node) || typeof node === 'object') && 'range' in (node as object)) {
      const range = (node as { range?: [number, number, number] }).range;
      if (range) return layer.lines.linePos(range[0]).line;
    }
    if (depth > 0) {
      const parent = depth === 1 ? layer.doc.contents : layer.doc.getIn(path.slice(0, depth - 1), true);
      if (isMap(parent)) {
        const pair = parent.items.find((p) => isScalar(p.key) && String(p.key.value) === String(path[depth - 1]));
        const range = pair && isScalar(pair.key) ? pair.key.range : undefined;
        if (range) return layer.lines.linePos(range[0]).line;
      }
    }
  }
  return undefined;
}

function hasPath(data: unknown, path: readonly (string | number)[]): boolean {
  let node: unknown = data;
  for (const key of path) {
    if (!isPlainObject(node) && !Array.isArray(node)) return false;
    node = (node as Record<string, unknown>)[key as string];
    if (node === undefined) return false;
  }
  return true;
}

function schemaIssue(error: ErrorObject, loaded: LoadedMapping): MappingIssue {
  const { path, message } = describeSchemaError(error);
  if (error.keyword === 'required' && loaded.layers.length > 1) {
    // A key missing from the merged mapping is one the site file must add: point there, and say which base
    // rule (or section) asks for it, rather than at the base file that has nothing to fix.
    const missing = (error.params as { missingProperty: string }).missingProperty;
    const { file, line } = loaded.locateSite(path);
    const base = path.length > 0 ? loaded.locateBase(path) : undefined;
    const owner = path[0] === 'resources' && path.length === 2 ? `base rule '${path[1]}'` : path.length > 0 ? `'${path.join('.')}'` : 'the mapping';
    const where = base ? ` (${base.line ? `${base.file}:${base.line}` : base.file})` : '';
    return { file, line, key: [...path, missing].join('.'), message: `missing required key '${missing}' of ${owner}${where}: the site file must add it` };
  }
  const { file, line } = loaded.locate(path);
  return { file, line, key: path.join('.'), message };
}

/** Loads a site mapping with its `extends` chain, validated against the mapping schema. */
export async function loadMapping(file: string): Promise<LoadedMapping> {
  const layers: MappingLayer[] = [];
  const seen = new Set<string>();
  let next: string | undefined = resolve(file);
  while (next) {
    if (seen.has(next)) {
      throw new MappingError([{ file: displayPath(next), key: 'extends', message: 'circular extends chain' }]);
    }
    seen.add(next);
    const child = layers.at(-1);
    const layer = child ? await readBase(child, next) : await readLayer(next);
    layers.push(layer);
    const parent = layer.data.extends;
    if (parent !== undefined && typeof parent !== 'string') {
      throw new MappingError([{ file: displayPath(next), line: lineOf(layer, ['extends']), key: 'extends', message: 'must be a file path' }]);
    }
    // Only mapping files: `extends: /etc/shadow` must not have the loader read whatever it names.
    if (parent !== undefined && !/\.ya?ml$/i.test(parent)) {
      throw new MappingError([{ file: displayPath(next), line: lineOf(layer, ['extends']), key: 'extends', message: 'must name a .yaml or .yml mapping file' }]);
    }
    if (parent !== undefined && layers.length >= MAX_EXTENDS_DEPTH) {
      throw new MappingError([{ file: displayPath(next), line: lineOf(layer, ['extends']), key: 'extends', message: `an extends chain of more than ${MAX_EXTENDS_DEPTH} files` }]);
    }
    if (parent !== undefined) {
      try {
        next = confined(next, parent);
      } catch (err) {
        throw new MappingError([{ file: displayPath(next), line: lineOf(layer, ['extends']), key: 'extends', message: (err as Error).message }]);
      }
    } else next = undefined;
  }
  let merged: unknown = {};
  for (const layer of [...layers].reverse()) merged = mergeLayers(merged, layer.data);
  const spec = merged as Record<string, unknown>;
  delete spec.extends;
  // An editor's schema pointer, not part of the mapping.
  delete spec.$schema;
  // Rules a site disables disappear before validation, so the base need not be complete for them.
  if (isPlainObject(spec.resources)) {
    for (const [id, rule] of Object.entries(spec.resources)) {
      if (isPlainObject(rule) && rule.disabled === true) delete spec.resources[id];
    }
  }

  const locate = (path: readonly (string | number)[]) => {
    const layer = layers.find((l) => hasPath(l.data, path)) ?? layers[0];
    return { file: displayPath(layer.path), line: lineOf(layer, path) };
  };
  const locateSite = (path: readonly (string | number)[]) => ({ file: displayPath(layers[0].path), line: lineOf(layers[0], path) });
  const loaded: LoadedMapping = {
    spec: spec as unknown as MappingSpec,
    path: layers[0].path,
    layers: layers.map((l) => ({ path: l.path, data: l.data })),
    locate,
    locateSite,
    locateBase: (path) => {
      const layer = layers.slice(1).find((l) => hasPath(l.data, path));
      return layer ? { file: displayPath(layer.path), line: lineOf(layer, path) } : undefined;
    },
  };
  if (!validateSpec(spec)) {
    throw new MappingError((validateSpec.errors ?? []).map((e) => schemaIssue(e, loaded)));
  }
  return loaded;
}

/**
 * Resolves a path named in a mapping relative to the layer that names it. The file must lie inside that
 * layer's directory (symbolic links followed): a mapping may name its ConceptMaps, not any file the process
 * can read (a parse error would quote the start of it).
 */
export function resolveFromLayer(loaded: LoadedMapping, keyPath: readonly string[], value: string): string {
  const layer = loaded.layers.find((l) => hasPath(l.data, keyPath)) ?? loaded.layers[0];
  return confined(layer.path, value);
}

/**
 * `value`, a path a mapping file names (a base it extends, a ConceptMap), resolved inside the directory of that
 * file, symbolic links followed; anything else (an absolute path, `..` past the directory, a link out of it,
 * /proc/self/environ) is refused before it is read.
 */
function confined(mappingFile: string, value: string): string {
  if (isAbsolute(value)) throw new Error(`'${value}' is an absolute path; name a file in the directory of ${displayPath(mappingFile)}`);
  const root = realOrSelf(dirname(mappingFile));
  const target = resolve(dirname(mappingFile), value);
  const rel = relative(root, realOrSelf(target));
  if (rel === '' || rel.startsWith('..') || isAbsolute(rel)) {
    throw new Error(`'${value}' is outside the directory of the mapping file that names it (${displayPath(mappingFile)})`);
  }
  return target;
}

function realOrSelf(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    // A missing file: its directory decides (the load then fails with "cannot load").
    try {
      return join(realpathSync(dirname(path)), basename(path));
    } catch {
      return path;
    }
  }
}
