import { describe, expect, it } from 'vitest';
import { jsonSyntaxProblem, parseStrictJson, scanJson, StrictJsonError } from './strict-json.ts';

describe('scanJson', () => {
  it('finds duplicate keys with the path of the object holding them, escapes decoded', () => {
    const scan = scanJson('[{"a":1,"b":2},{"a":1,"\\u0061":2,"s":"x\\"a\\":"},{"n":{"k":1,"k":2}}]', 32);
    expect(scan.duplicates.map((d) => [d.key, d.path])).toEqual([
      ['a', [1]],
      ['k', [2, 'n']],
    ]);
  });

  it('stops at the first nesting past the limit and says where', () => {
    expect(scanJson('{"a":[[[1]]]}', 3).tooDeep).toEqual({ path: ['a', 0, 0], offset: 7 });
    expect(scanJson('{"a":[[1]]}', 3).tooDeep).toBeUndefined();
  });
});

describe('parseStrictJson', () => {
  it('parses what JSON.parse parses when there is nothing to refuse', () => {
    expect(parseStrictJson('{"files":[{"name":"a","content":"{\\"x\\":1,\\"x\\":2}"}]}', 8)).toEqual({ files: [{ name: 'a', content: '{"x":1,"x":2}' }] });
  });

  it('refuses duplicates, depth and bad syntax without quoting the text', () => {
    expect(() => parseStrictJson('{"a":1,\n"a":2}', 8)).toThrow(/^duplicate key 'a' in the top level \(line 2\)/);
    expect(() => parseStrictJson('[[[[]]]]', 3)).toThrow(StrictJsonError);
    for (const text of ['{"name": Secret Person}', '{"name": "Secret Person" x}', '{"name": "Secret Person', '']) {
      const error = (() => {
        try {
          parseStrictJson(text, 8);
        } catch (err) {
          return err as Error;
        }
      })();
      expect(error).toBeInstanceOf(StrictJsonError);
      expect(error!.message).not.toMatch(/Secret|Person/);
    }
  });

  it('turns V8 positions into line and column', () => {
    let caught: unknown;
    try {
      JSON.parse('{\n  "a": 1,\n  "b" 2\n}');
    } catch (err) {
      caught = err;
    }
    expect(jsonSyntaxProblem(caught, '{\n  "a": 1,\n  "b" 2\n}')).toEqual({ reason: 'not valid JSON: syntax error at line 3, column 7', line: 3 });
  });
});
