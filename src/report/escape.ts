/** Text for HTML or SVG content and attribute values: everything from the server is data, never markup. */
export function escapeHtml(value: string | number): string {
  return String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
