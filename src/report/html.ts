// The page shell every report shares: escaping, one inline stylesheet, tables. No
// external resource is referenced, so a report opens the same offline, years later.

export function escapeHtml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&#39;');
}

const STYLE = `
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; background: #f3f4f6; color: #111827; }
main { max-width: 1500px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 24px; margin: 0 0 6px; }
h2 { font-size: 18px; margin: 28px 0 10px; }
h3 { font-size: 15px; margin: 18px 0 8px; }
p.lead { color: #374151; margin: 4px 0 14px; max-width: 1000px; line-height: 1.45; }
.notice { background: #fef3c7; border: 1px solid #f59e0b; border-radius: 6px; padding: 10px 14px; margin: 12px 0; max-width: 1000px; line-height: 1.45; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0; }
.card { background: #fff; border-radius: 8px; padding: 10px 14px; box-shadow: 0 1px 2px rgba(0,0,0,.08); min-width: 130px; }
.card .k { font-size: 12px; color: #6b7280; }
.card .v { font-size: 20px; font-weight: 600; margin-top: 2px; }
.grid { display: flex; flex-wrap: wrap; gap: 14px; }
.panel { background: #fff; border-radius: 8px; padding: 8px; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.panel svg { display: block; max-width: 100%; height: auto; }
table { border-collapse: collapse; background: #fff; font-size: 13px; box-shadow: 0 1px 2px rgba(0,0,0,.08); margin: 8px 0; }
th, td { padding: 5px 9px; border-bottom: 1px solid #e5e7eb; text-align: right; white-space: nowrap; }
th { background: #f9fafb; font-weight: 600; }
td.l, th.l { text-align: left; }
tr.nc td { color: #b91c1c; }
.better { color: #047857; font-weight: 600; }
.worse { color: #b91c1c; font-weight: 600; }
details { margin: 10px 0; }
summary { cursor: pointer; font-weight: 600; }
code { background: #e5e7eb; border-radius: 3px; padding: 0 4px; }
footer { color: #6b7280; font-size: 12px; margin-top: 28px; }
`;

export function page(title: string, body: string): string {
  return (
    `<!doctype html>\n<html lang="en"><head><meta charset="utf-8">` +
    `<meta name="viewport" content="width=device-width, initial-scale=1">` +
    `<title>${escapeHtml(title)}</title><style>${STYLE}</style></head>` +
    `<body><main>${body}</main></body></html>\n`
  );
}

export interface Column<Row> {
  readonly header: string;
  readonly cell: (row: Row) => string;
  /** Left-aligned (text) rather than right-aligned (figures). */
  readonly left?: boolean;
  /** The cell is already HTML (otherwise it is escaped). */
  readonly html?: boolean;
}

export function table<Row>(rows: readonly Row[], columns: readonly Column<Row>[], rowClass?: (row: Row) => string): string {
  const head = columns.map((c) => `<th${c.left ? ' class="l"' : ''}>${escapeHtml(c.header)}</th>`).join('');
  const body = rows
    .map((row) => {
      const cls = rowClass?.(row);
      const cells = columns.map((c) => `<td${c.left ? ' class="l"' : ''}>${c.html ? c.cell(row) : escapeHtml(c.cell(row))}</td>`).join('');
      return `<tr${cls ? ` class="${cls}"` : ''}>${cells}</tr>`;
    })
    .join('');
  return `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

export function cards(items: readonly (readonly [string, string])[]): string {
  return `<div class="cards">${items.map(([k, v]) => `<div class="card"><div class="k">${escapeHtml(k)}</div><div class="v">${escapeHtml(v)}</div></div>`).join('')}</div>`;
}
