/**
 * ANSI SGR colours to styled text segments, for job logs in the browser. Pure and stateful across
 * chunks (a log arrives in pieces, an escape sequence may be split). Other escape sequences (cursor
 * moves, OSC titles) are dropped; text is never interpreted as HTML (callers make text nodes).
 */
export interface Segment {
  text: string;
  /** CSS classes: ansi-bold, ansi-dim, ansi-italic, ansi-underline, ansi-fg-N, ansi-bg-N (N 0..15). */
  classes: string[];
  /** Inline colours for 256-colour and true-colour codes. */
  color?: string;
  background?: string;
}

interface Style {
  bold: boolean;
  dim: boolean;
  italic: boolean;
  underline: boolean;
  fg: number | string | null;
  bg: number | string | null;
}

const plain = (): Style => ({ bold: false, dim: false, italic: false, underline: false, fg: null, bg: null });

/** xterm's 256-colour palette beyond the first 16, as CSS rgb(). */
export function color256(n: number): string | number {
  if (n < 16) return n;
  if (n < 232) {
    const c = n - 16;
    const v = (x: number) => (x === 0 ? 0 : 55 + x * 40);
    return `rgb(${v(Math.floor(c / 36))},${v(Math.floor(c / 6) % 6)},${v(c % 6)})`;
  }
  const g = 8 + (n - 232) * 10;
  return `rgb(${g},${g},${g})`;
}

export class AnsiParser {
  #style = plain();
  #rest = '';

  push(chunk: string): Segment[] {
    const text = this.#rest + chunk;
    this.#rest = '';
    const out: Segment[] = [];
    let i = 0;
    let start = 0;
    const emit = (end: number) => {
      if (end > start) out.push(this.#segment(text.slice(start, end)));
    };
    while (i < text.length) {
      if (text.charCodeAt(i) !== 0x1b) {
        i++;
        continue;
      }
      emit(i);
      if (i + 1 >= text.length) {
        this.#rest = text.slice(i);
        return out;
      }
      const next = text[i + 1];
      if (next === '[') {
        let j = i + 2;
        while (j < text.length && !/[@-~]/.test(text[j]!)) j++;
        if (j >= text.length) {
          if (text.length - i > 64) i = start = text.length; // not an escape at all: drop
          else this.#rest = text.slice(i);
          return out;
        }
        if (text[j] === 'm') this.#apply(text.slice(i + 2, j));
        i = start = j + 1;
      } else if (next === ']') {
        // OSC: up to BEL or ESC \
        const bel = text.indexOf('\x07', i);
        const st = text.indexOf('\x1b\\', i);
        const end = bel === -1 ? st : st === -1 ? bel : Math.min(bel, st);
        if (end === -1) {
          this.#rest = text.slice(i);
          return out;
        }
        i = start = end + (end === st ? 2 : 1);
      } else {
        i = start = i + 2;
      }
    }
    emit(i);
    return out;
  }

  #apply(params: string): void {
    const codes = params === '' ? [0] : params.split(';').map((x) => (x === '' ? 0 : Number(x)));
    for (let k = 0; k < codes.length; k++) {
      const c = codes[k]!;
      if (c === 0) this.#style = plain();
      else if (c === 1) this.#style.bold = true;
      else if (c === 2) this.#style.dim = true;
      else if (c === 3) this.#style.italic = true;
      else if (c === 4) this.#style.underline = true;
      else if (c === 22) this.#style.bold = this.#style.dim = false;
      else if (c === 23) this.#style.italic = false;
      else if (c === 24) this.#style.underline = false;
      else if (c >= 30 && c <= 37) this.#style.fg = c - 30;
      else if (c >= 90 && c <= 97) this.#style.fg = c - 90 + 8;
      else if (c === 39) this.#style.fg = null;
      else if (c >= 40 && c <= 47) this.#style.bg = c - 40;
      else if (c >= 100 && c <= 107) this.#style.bg = c - 100 + 8;
      else if (c === 49) this.#style.bg = null;
      else if (c === 38 || c === 48) {
        let v: number | string | null = null;
        if (codes[k + 1] === 5 && codes[k + 2] !== undefined) {
          v = color256(codes[k + 2]!);
          k += 2;
        } else if (codes[k + 1] === 2 && codes[k + 4] !== undefined) {
          v = `rgb(${codes[k + 2]},${codes[k + 3]},${codes[k + 4]})`;
          k += 4;
        }
        if (c === 38) this.#style.fg = v;
        else this.#style.bg = v;
      }
    }
  }

  #segment(text: string): Segment {
    const s = this.#style;
    const classes: string[] = [];
    if (s.bold) classes.push('ansi-bold');
    if (s.dim) classes.push('ansi-dim');
    if (s.italic) classes.push('ansi-italic');
    if (s.underline) classes.push('ansi-underline');
    const seg: Segment = { text, classes };
    if (typeof s.fg === 'number') classes.push(`ansi-fg-${s.fg}`);
    else if (typeof s.fg === 'string') seg.color = s.fg;
    if (typeof s.bg === 'number') classes.push(`ansi-bg-${s.bg}`);
    else if (typeof s.bg === 'string') seg.background = s.bg;
    return seg;
  }
}
