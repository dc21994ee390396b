import { describe, expect, it } from 'vitest';
import { terminalSafe } from './terminal.ts';

describe('terminalSafe', () => {
  it('shows ANSI CSI and OSC sequences, C0, DEL and C1 characters escaped', () => {
    const hostile = '\u001b[31mred\u001b[0m \u001b]8;;https://x.test\u0007link\u001b]8;;\u0007 \u009b2J \u007f\u0000';
    const safe = terminalSafe(hostile);
    expect(safe).toBe('\\x1b[31mred\\x1b[0m \\x1b]8;;https://x.test\\x07link\\x1b]8;;\\x07 \\x9b2J \\x7f\\x00');
    expect(safe).not.toMatch(/[\u0000-\u001f\u007f-\u009f]/u);
  });

  it('keeps one log line one line and bidi overrides visible', () => {
    expect(terminalSafe('a\nforged line\r\tb')).toBe('a\\nforged line\\r\\tb');
    expect(terminalSafe('x\u202ey')).toBe('x\\u{202e}y');
  });

  it('leaves ordinary text, accents and other scripts as they are', () => {
    const text = 'Site Zürich — 東京 mg/dL "quoted" \\ path';
    expect(terminalSafe(text)).toBe(text);
  });
});
