#!/usr/bin/env python3
"""Prints the random-Unicode part of corpus.jsonl: COUNT JSON string literals, one a line.

The strings come from a fixed PRNG (splitmix64, seed SEED below), not from Python's `random`,
so the output is the same on every Python 3 and platform:

    python3 tests/data/tokenizer/make_random.py | diff - <(tail -n 60 tests/data/tokenizer/corpus.jsonl)

Code points are drawn from assigned ranges across the planes (Latin, Greek, Cyrillic, Armenian,
Hebrew, Arabic, Devanagari, Thai, Georgian, Hangul, CJK, kana, symbols, combining marks, private
use, math alphanumerics, CJK Extension B, emoji with skin tones / ZWJ / variation selectors,
supplementary private use), never surrogates (U+D800..U+DFFF) or noncharacters, and never U+0000.
Lengths are 1..80 code points.
"""
import json
import sys

SEED = 0x4D6F697261  # "Moira"
COUNT = 60
MASK = (1 << 64) - 1

# (first, last, weight): inclusive ranges of assigned code points.
RANGES = [
    (0x0020, 0x007E, 12),   # Basic Latin (printable, incl. digits and punctuation)
    (0x00A0, 0x00FF, 4),    # Latin-1 Supplement (NBSP, accents, symbols, superscripts)
    (0x0100, 0x017F, 3),    # Latin Extended-A
    (0x0250, 0x02AF, 1),    # IPA Extensions
    (0x0300, 0x036F, 3),    # Combining Diacritical Marks
    (0x0391, 0x03A1, 1),    # Greek capitals
    (0x03A3, 0x03C9, 2),    # Greek
    (0x0400, 0x04FF, 4),    # Cyrillic
    (0x0531, 0x0556, 1),    # Armenian capitals
    (0x0561, 0x0586, 1),    # Armenian small
    (0x05D0, 0x05EA, 2),    # Hebrew letters
    (0x0621, 0x064A, 2),    # Arabic letters
    (0x064B, 0x0652, 1),    # Arabic harakat (combining)
    (0x0660, 0x0669, 1),    # Arabic-Indic digits
    (0x0905, 0x0939, 2),    # Devanagari letters
    (0x093E, 0x094D, 1),    # Devanagari vowel signs, virama (combining)
    (0x0966, 0x096F, 1),    # Devanagari digits
    (0x0E01, 0x0E3A, 2),    # Thai
    (0x0E40, 0x0E5B, 1),    # Thai
    (0x10D0, 0x10FA, 1),    # Georgian
    (0x1100, 0x1112, 1),    # Hangul Jamo
    (0x2010, 0x2027, 2),    # General Punctuation
    (0x2030, 0x205E, 1),    # General Punctuation
    (0x2070, 0x2071, 1),    # superscript 0, i
    (0x2074, 0x208E, 1),    # superscripts and subscripts
    (0x20A0, 0x20BF, 1),    # Currency Symbols
    (0x2190, 0x21FF, 1),    # Arrows
    (0x2200, 0x22FF, 1),    # Mathematical Operators
    (0x2460, 0x24FF, 1),    # Enclosed Alphanumerics
    (0x2500, 0x257F, 1),    # Box Drawing
    (0x3001, 0x303F, 1),    # CJK Symbols and Punctuation (incl. U+3000 neighbours)
    (0x3041, 0x3096, 3),    # Hiragana
    (0x30A1, 0x30FA, 3),    # Katakana
    (0x4E00, 0x9FCB, 10),   # CJK Unified Ideographs (crosses the tokenizer's U+9FA5 edge)
    (0xAC00, 0xD7A3, 5),    # Hangul Syllables
    (0xE000, 0xF8FF, 1),    # Private Use Area
    (0xFF01, 0xFF5E, 2),    # Fullwidth ASCII (incl. fullwidth digits)
    (0xFF61, 0xFF9F, 1),    # Halfwidth Katakana
    (0x1D400, 0x1D454, 1),  # Mathematical Alphanumeric Symbols (bold, italic)
    (0x1D7CE, 0x1D7FF, 1),  # Mathematical digits (\p{Nd} outside the BMP)
    (0x1F300, 0x1F320, 1),  # Misc Symbols and Pictographs
    (0x1F600, 0x1F64F, 3),  # Emoticons
    (0x1F680, 0x1F6C5, 1),  # Transport and Map Symbols
    (0x1F3FB, 0x1F3FF, 2),  # emoji skin-tone modifiers
    (0x1F1E6, 0x1F1FF, 1),  # regional indicators (flags)
    (0x20000, 0x2A6D6, 2),  # CJK Unified Ideographs Extension B
    (0xF0000, 0xFFFFD, 1),  # Supplementary Private Use Area-A (no U+FFFFE/U+FFFFF)
]
# Single code points mixed in on their own: whitespace, joiners, selectors, keycap, BOM.
SINGLES = [0x20, 0x20, 0x20, 0x09, 0x0A, 0x0D, 0xA0, 0x3000, 0x2028, 0x0085, 0xFEFF,
           0x200D, 0x200D, 0xFE0F, 0xFE0E, 0x20E3, 0x200B, 0x00AD]


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & MASK

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, n):
        """Uniform integer in [0, n) (rejection sampling, no modulo bias)."""
        limit = (1 << 64) - ((1 << 64) % n)
        while True:
            x = self.next()
            if x < limit:
                return x % n


def pick_range(rng, ranges):
    total = sum(w for _, _, w in ranges)
    r = rng.below(total)
    for lo, hi, w in ranges:
        if r < w:
            return lo, hi
        r -= w
    raise AssertionError


def random_string(rng):
    length = 1 + rng.below(80)
    # Half the strings stay mostly within a few ranges (runs of one script, as text has);
    # the rest draw every code point afresh.
    if rng.below(2) == 0:
        pool = [RANGES[rng.below(len(RANGES))] for _ in range(1 + rng.below(3))]
    else:
        pool = RANGES
    out = []
    while len(out) < length:
        if rng.below(8) == 0:
            out.append(SINGLES[rng.below(len(SINGLES))])
            continue
        lo, hi = pick_range(rng, pool)
        out.append(lo + rng.below(hi - lo + 1))
    for cp in out:
        assert cp != 0 and not 0xD800 <= cp <= 0xDFFF
        assert not 0xFDD0 <= cp <= 0xFDEF and (cp & 0xFFFE) != 0xFFFE
    return "".join(chr(cp) for cp in out)


def dumps_line(s):
    """One JSON string literal on one line: UTF-8 as is, except characters that some line
    readers treat as line ends or as a BOM (C0/C1 controls, U+2028, U+2029, U+FEFF) are
    \\u-escaped."""
    out = json.dumps(s, ensure_ascii=False)
    return "".join(
        "\\u%04x" % ord(c) if (0x7F <= ord(c) <= 0x9F or ord(c) in (0x2028, 0x2029, 0xFEFF)) else c
        for c in out)


def main():
    rng = SplitMix64(SEED)
    lines = [dumps_line(random_string(rng)) for _ in range(COUNT)]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
