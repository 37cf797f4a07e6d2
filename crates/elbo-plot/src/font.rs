//! A 5x7 bitmap font: digits, capitals and the punctuation that numbers and labels use.
//!
//! There are no lower-case glyphs: text is drawn in capitals (`a` is drawn as `A`), so
//! `-1.2e3` reads `-1.2E3`. A character without a glyph leaves a blank cell, so the
//! text after it keeps its place.

/// Columns of a glyph, in font pixels.
pub const GLYPH_WIDTH: usize = 5;
/// Rows of a glyph, in font pixels.
pub const GLYPH_HEIGHT: usize = 7;
/// Horizontal distance from one character to the next at scale 1: the glyph and one
/// blank column.
pub const ADVANCE: usize = GLYPH_WIDTH + 1;

/// The glyphs, rows top to bottom, columns left to right (`1`: ink).
const GLYPHS: &[(char, &str)] = &[
    ('0', "01110 10001 10011 10101 11001 10001 01110"),
    ('1', "00100 01100 00100 00100 00100 00100 01110"),
    ('2', "01110 10001 00001 00010 00100 01000 11111"),
    ('3', "11111 00010 00100 00010 00001 10001 01110"),
    ('4', "00010 00110 01010 10010 11111 00010 00010"),
    ('5', "11111 10000 11110 00001 00001 10001 01110"),
    ('6', "00110 01000 10000 11110 10001 10001 01110"),
    ('7', "11111 00001 00010 00100 01000 01000 01000"),
    ('8', "01110 10001 10001 01110 10001 10001 01110"),
    ('9', "01110 10001 10001 01111 00001 00010 01100"),
    ('A', "01110 10001 10001 11111 10001 10001 10001"),
    ('B', "11110 10001 10001 11110 10001 10001 11110"),
    ('C', "01110 10001 10000 10000 10000 10001 01110"),
    ('D', "11100 10010 10001 10001 10001 10010 11100"),
    ('E', "11111 10000 10000 11110 10000 10000 11111"),
    ('F', "11111 10000 10000 11110 10000 10000 10000"),
    ('G', "01110 10001 10000 10111 10001 10001 01111"),
    ('H', "10001 10001 10001 11111 10001 10001 10001"),
    ('I', "01110 00100 00100 00100 00100 00100 01110"),
    ('J', "00111 00010 00010 00010 00010 10010 01100"),
    ('K', "10001 10010 10100 11000 10100 10010 10001"),
    ('L', "10000 10000 10000 10000 10000 10000 11111"),
    ('M', "10001 11011 10101 10101 10001 10001 10001"),
    ('N', "10001 10001 11001 10101 10011 10001 10001"),
    ('O', "01110 10001 10001 10001 10001 10001 01110"),
    ('P', "11110 10001 10001 11110 10000 10000 10000"),
    ('Q', "01110 10001 10001 10001 10101 10010 01101"),
    ('R', "11110 10001 10001 11110 10100 10010 10001"),
    ('S', "01111 10000 10000 01110 00001 00001 11110"),
    ('T', "11111 00100 00100 00100 00100 00100 00100"),
    ('U', "10001 10001 10001 10001 10001 10001 01110"),
    ('V', "10001 10001 10001 10001 10001 01010 00100"),
    ('W', "10001 10001 10001 10101 10101 10101 01010"),
    ('X', "10001 10001 01010 00100 01010 10001 10001"),
    ('Y', "10001 10001 01010 00100 00100 00100 00100"),
    ('Z', "11111 00001 00010 00100 01000 10000 11111"),
    ('.', "00000 00000 00000 00000 00000 01100 01100"),
    (',', "00000 00000 00000 00000 01100 00100 01000"),
    ('-', "00000 00000 00000 11111 00000 00000 00000"),
    ('+', "00000 00100 00100 11111 00100 00100 00000"),
    ('_', "00000 00000 00000 00000 00000 00000 11111"),
    (':', "00000 01100 01100 00000 01100 01100 00000"),
    ('/', "00001 00001 00010 00100 01000 10000 10000"),
    ('(', "00010 00100 01000 01000 01000 00100 00010"),
    (')', "01000 00100 00010 00010 00010 00100 01000"),
    ('[', "01110 01000 01000 01000 01000 01000 01110"),
    (']', "01110 00010 00010 00010 00010 00010 01110"),
    ('=', "00000 00000 11111 00000 11111 00000 00000"),
    ('<', "00010 00100 01000 10000 01000 00100 00010"),
    ('>', "01000 00100 00010 00001 00010 00100 01000"),
    ('%', "11000 11001 00010 00100 01000 10011 00011"),
    ('*', "00000 00100 10101 01110 10101 00100 00000"),
    ('#', "01010 01010 11111 01010 11111 01010 01010"),
    ('\'', "00100 00100 01000 00000 00000 00000 00000"),
    ('!', "00100 00100 00100 00100 00100 00000 00100"),
    ('?', "01110 10001 00001 00010 00100 00000 00100"),
    (' ', "00000 00000 00000 00000 00000 00000 00000"),
];

/// The bitmap of `c` (`true`: ink), rows top to bottom; lower-case ASCII letters get
/// their capital's glyph. `None` for a character the font does not have.
pub fn glyph(c: char) -> Option<[[bool; GLYPH_WIDTH]; GLYPH_HEIGHT]> {
    let c = c.to_ascii_uppercase();
    let (_, rows) = GLYPHS.iter().find(|(g, _)| *g == c)?;
    let mut bitmap = [[false; GLYPH_WIDTH]; GLYPH_HEIGHT];
    for (row, bits) in bitmap.iter_mut().zip(rows.split(' ')) {
        for (pixel, bit) in row.iter_mut().zip(bits.bytes()) {
            *pixel = bit == b'1';
        }
    }
    Some(bitmap)
}

/// The width in image pixels of `text` drawn at `scale` (each font pixel a
/// `scale` x `scale` square), from the left of its first glyph to the right of its last.
pub fn text_width(text: &str, scale: usize) -> usize {
    let n = text.chars().count();
    if n == 0 { 0 } else { (n * ADVANCE - 1) * scale }
}

/// The height in image pixels of a line of text at `scale`.
pub fn text_height(scale: usize) -> usize {
    GLYPH_HEIGHT * scale
}

/// `text` cut to at most `width` pixels at `scale`, ending in `..` when it was cut.
pub fn fit(text: &str, width: usize, scale: usize) -> String {
    if text_width(text, scale) <= width {
        return text.to_string();
    }
    let room = (width / scale + 1) / ADVANCE;
    if room <= 2 {
        return text.chars().take(room).collect();
    }
    let mut cut: String = text.chars().take(room - 2).collect();
    cut.push_str("..");
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_glyph_is_five_by_seven_and_distinct() {
        for (c, rows) in GLYPHS {
            let rows: Vec<&str> = rows.split(' ').collect();
            assert_eq!(rows.len(), GLYPH_HEIGHT, "{c:?}");
            assert!(
                rows.iter()
                    .all(|r| r.len() == GLYPH_WIDTH && r.chars().all(|b| b == '0' || b == '1')),
                "{c:?}"
            );
        }
        for (i, (a, ra)) in GLYPHS.iter().enumerate() {
            for (b, rb) in &GLYPHS[i + 1..] {
                assert_ne!(a, b, "{a:?} is defined twice");
                assert!(ra != rb, "{a:?} and {b:?} look alike");
            }
        }
    }

    #[test]
    fn numbers_in_any_notation_have_glyphs_and_lower_case_is_drawn_as_capitals() {
        for text in ["-1.2e3", "2.5E-7", "+0.125", "12%", "nan", "inf"] {
            assert!(text.chars().all(|c| glyph(c).is_some()), "{text}");
        }
        assert_eq!(glyph('e'), glyph('E'));
        assert_ne!(glyph('E'), glyph(' '));
        assert_eq!(glyph('é'), None);
    }

    #[test]
    fn widths_and_fitting() {
        assert_eq!(text_width("", 2), 0);
        assert_eq!(text_width("A", 1), 5);
        assert_eq!(text_width("AB", 2), 22);
        let long = "a title far too long for its panel";
        let cut = fit(long, 100, 2);
        assert!(text_width(&cut, 2) <= 100, "{cut}");
        assert!(cut.ends_with(".."), "{cut}");
        assert_eq!(fit("short", 100, 2), "short");
        assert_eq!(fit("abc", 0, 2), "");
    }
}
