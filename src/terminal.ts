/**
 * Neutralises text from outside (server messages, file names, values, job reasons) before it reaches a
 * terminal or a log line. A raw ESC starts ANSI CSI/OSC sequences that can recolour, retitle or hide output,
 * rewrite earlier lines or plant hyperlinks; a raw newline forges a second log line; bidi overrides make text
 * read differently from what it is. Each such character is shown as a visible escape instead, so the text stays
 * readable and inert. Everything else (including non-Latin letters) passes through unchanged.
 */
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/gu;

const NAMED: Readonly<Record<string, string>> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

function visible(char: string): string {
  const named = NAMED[char];
  if (named !== undefined) return named;
  const code = char.codePointAt(0) ?? 0;
  return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u{${code.toString(16)}}`;
}

/** `text` with every control, escape (C0, DEL, C1: ESC/CSI/OSC starters) and bidi-control character escaped. */
export function terminalSafe(text: string): string {
  return text.replace(UNSAFE, visible);
}

/** Multi-line text (a message listing several problems) with each line made safe; its own line breaks stay. */
export function terminalSafeLines(text: string): string {
  return text.split('\n').map(terminalSafe).join('\n');
}
