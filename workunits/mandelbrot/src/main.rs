//! Example work unit: tiles of a Mandelbrot zoom, and their assembly.
//!
//! As a unit: `mandelbrot render INDEX TILES_X TILES_Y WIDTH HEIGHT CX CY SCALE MAX_ITER`
//! renders tile INDEX (row-major) of a WIDTH x HEIGHT image centred on
//! (CX, CY), SCALE units of the complex plane per pixel, into
//! `/output/tile.pgm` (iteration counts mapped to grey levels).
//!
//! Natively, after `cobble results JOB --out DIR`:
//! `mandelbrot assemble DIR TILES_X TILES_Y OUT.png` stitches the tiles
//! into one PNG a person can look at.
//!
//! Only IEEE-exact f64 operations (+, -, *, comparisons), which every
//! conforming platform computes identically, so replicas agree bit for bit.

mod png;

use std::process::ExitCode;

/// Iterations run between escape tests on the fast path.
const BLOCK: u32 = 8;
/// The fast path's test at the end of a block: stricter than the escape
/// radius (|z|^2 > 4), so that it cannot miss an escape inside the block.
const BLOCK_ALARM: f64 = 3.9;

/// Escape-time iteration count of c = (x, y), or `max_iter` inside the set.
///
/// Most points take many iterations, so they run [`BLOCK`] at a time with
/// one test at the end of the block instead of one per iteration (one
/// branch, and one fuel check in the sandbox, per eight iterations). Once
/// |z| exceeds 2 it only grows, so an escape inside a block leaves |z|^2
/// far above [`BLOCK_ALARM`] (or infinite, or NaN) at its end. Then the
/// block is run again from its start one iteration at a time, with the
/// plain test, to the end: the count, and every value computed, are
/// exactly those of the plain loop. An orbit that merely lingers near
/// |z| = 2 falls back to the plain loop early, which is only slower.
fn escape_time(x: f64, y: f64, max_iter: u32) -> u32 {
    let (mut zr, mut zi) = (0.0f64, 0.0f64);
    let mut i = 0;
    while i + BLOCK <= max_iter {
        let (start_r, start_i) = (zr, zi);
        for _ in 0..BLOCK {
            let (zr2, zi2) = (zr * zr, zi * zi);
            zi = 2.0 * zr * zi + y;
            zr = zr2 - zi2 + x;
        }
        // NaN (from overflow after an escape) alarms too.
        let magnitude = zr * zr + zi * zi;
        if magnitude > BLOCK_ALARM || magnitude.is_nan() {
            (zr, zi) = (start_r, start_i);
            break;
        }
        i += BLOCK;
    }
    while i < max_iter {
        let (zr2, zi2) = (zr * zr, zi * zi);
        if zr2 + zi2 > 4.0 {
            return i;
        }
        zi = 2.0 * zr * zi + y;
        zr = zr2 - zi2 + x;
        i += 1;
    }
    max_iter
}

/// Grey level of an iteration count: black inside; outside, a square-root
/// ramp from white (escapes at once) to dark (escapes late), which brings
/// out the filaments. IEEE 754 requires sqrt to be correctly rounded, so
/// this too is the same on every host.
fn shade(iterations: u32, max_iter: u32) -> u8 {
    if iterations >= max_iter {
        return 0;
    }
    let depth = (f64::from(iterations) / f64::from(max_iter.max(1))).sqrt();
    (255.0 - depth * 2.0 * 254.0).clamp(1.0, 255.0) as u8
}

struct View {
    width: u32,
    height: u32,
    cx: f64,
    cy: f64,
    scale: f64,
    max_iter: u32,
}

/// Renders the pixels `[x0, x1) x [y0, y1)` row by row.
fn render(view: &View, (x0, y0, x1, y1): (u32, u32, u32, u32)) -> Vec<u8> {
    let mut pixels = Vec::with_capacity(((x1 - x0) * (y1 - y0)) as usize);
    for py in y0..y1 {
        let y = view.cy + (f64::from(py) - f64::from(view.height) / 2.0) * view.scale;
        for px in x0..x1 {
            let x = view.cx + (f64::from(px) - f64::from(view.width) / 2.0) * view.scale;
            pixels.push(shade(escape_time(x, y, view.max_iter), view.max_iter));
        }
    }
    pixels
}

/// The pixel rectangle of tile `index` in a `tiles_x` x `tiles_y` grid.
fn tile_bounds(
    index: u32,
    tiles_x: u32,
    tiles_y: u32,
    width: u32,
    height: u32,
) -> (u32, u32, u32, u32) {
    let (column, row) = (index % tiles_x, index / tiles_x);
    let (x0, x1) = (width * column / tiles_x, width * (column + 1) / tiles_x);
    let (y0, y1) = (height * row / tiles_y, height * (row + 1) / tiles_y);
    (x0, y0, x1, y1.min(height))
}

fn pgm(width: u32, height: u32, pixels: &[u8]) -> Vec<u8> {
    let mut bytes = format!("P5\n{width} {height}\n255\n").into_bytes();
    bytes.extend_from_slice(pixels);
    bytes
}

fn parse_pgm(bytes: &[u8]) -> Option<(u32, u32, &[u8])> {
    let mut fields = Vec::new();
    let mut at = 0;
    while fields.len() < 4 {
        while bytes.get(at)?.is_ascii_whitespace() {
            at += 1;
        }
        let start = at;
        while !bytes.get(at)?.is_ascii_whitespace() {
            at += 1;
        }
        fields.push(std::str::from_utf8(&bytes[start..at]).ok()?);
    }
    let (width, height): (u32, u32) = (fields[1].parse().ok()?, fields[2].parse().ok()?);
    let pixels = bytes.get(at + 1..)?;
    (fields[0] == "P5" && pixels.len() == (width * height) as usize)
        .then_some((width, height, pixels))
}

fn main() -> ExitCode {
    let args = cobble_sdk::args();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match words.as_slice() {
        ["render", rest @ ..] if rest.len() == 9 => render_tile(rest),
        ["assemble", dir, tiles_x, tiles_y, out] => assemble(dir, tiles_x, tiles_y, out),
        _ => Err("usage: mandelbrot render INDEX TILES_X TILES_Y WIDTH HEIGHT CX CY SCALE MAX_ITER\n       mandelbrot assemble RESULTS_DIR TILES_X TILES_Y OUT.png".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
    }
}

fn number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{what} must be a number, got {text:?}"))
}

fn render_tile(args: &[&str]) -> Result<(), String> {
    let index: u32 = number(args[0], "INDEX")?;
    let (tiles_x, tiles_y): (u32, u32) = (number(args[1], "TILES_X")?, number(args[2], "TILES_Y")?);
    let view = View {
        width: number(args[3], "WIDTH")?,
        height: number(args[4], "HEIGHT")?,
        cx: number(args[5], "CX")?,
        cy: number(args[6], "CY")?,
        scale: number(args[7], "SCALE")?,
        max_iter: number(args[8], "MAX_ITER")?,
    };
    if tiles_x == 0
        || tiles_y == 0
        || index >= tiles_x * tiles_y
        || view.width < tiles_x
        || view.height < tiles_y
    {
        return Err("the tile grid does not fit the image".into());
    }
    let bounds = tile_bounds(index, tiles_x, tiles_y, view.width, view.height);
    let pixels = render(&view, bounds);
    let (x0, y0, x1, y1) = bounds;
    cobble_sdk::write_output("tile.pgm", &pgm(x1 - x0, y1 - y0, &pixels))
        .map_err(|e| e.to_string())?;
    println!(
        "tile {index}: {}x{} pixels at ({x0}, {y0})",
        x1 - x0,
        y1 - y0
    );
    Ok(())
}

fn assemble(dir: &str, tiles_x: &str, tiles_y: &str, out: &str) -> Result<(), String> {
    let (tiles_x, tiles_y): (u32, u32) = (number(tiles_x, "TILES_X")?, number(tiles_y, "TILES_Y")?);
    if tiles_x == 0 || tiles_y == 0 {
        return Err("TILES_X and TILES_Y must be at least 1".into());
    }
    let mut tiles = Vec::new();
    for index in 0..tiles_x * tiles_y {
        let path = std::path::Path::new(dir)
            .join(index.to_string())
            .join("tile.pgm");
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        tiles.push(bytes);
    }
    let parsed: Vec<(u32, u32, &[u8])> = tiles
        .iter()
        .enumerate()
        .map(|(i, bytes)| parse_pgm(bytes).ok_or(format!("tile {i} is not a PGM image")))
        .collect::<Result<_, _>>()?;
    let width: u32 = parsed[..tiles_x as usize].iter().map(|t| t.0).sum();
    let height: u32 = parsed.iter().step_by(tiles_x as usize).map(|t| t.1).sum();
    let mut image = vec![0u8; (width * height) as usize];
    let (mut y0, mut x0) = (0, 0);
    for (index, (w, h, pixels)) in parsed.iter().enumerate() {
        for row in 0..*h {
            let from = (row * w) as usize;
            let to = ((y0 + row) * width + x0) as usize;
            image[to..to + *w as usize].copy_from_slice(&pixels[from..from + *w as usize]);
        }
        x0 += w;
        if (index as u32 + 1).is_multiple_of(tiles_x) {
            x0 = 0;
            y0 += h;
        }
    }
    std::fs::write(out, png::encode_grey(width, height, &image))
        .map_err(|e| format!("{out}: {e}"))?;
    println!("wrote {out}: {width}x{height}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_points_of_the_set() {
        assert_eq!(escape_time(0.0, 0.0, 500), 500, "the origin is inside");
        assert_eq!(escape_time(-1.0, 0.0, 500), 500, "-1 cycles with period 2");
        assert_eq!(
            escape_time(-2.0, 0.0, 500),
            500,
            "-2 stays on |z| = 2 forever: the block test alarms, the plain test never escapes"
        );
        assert_eq!(
            escape_time(2.0, 0.0, 500),
            2,
            "|z| reaches 6 at the second step"
        );
        // Values from an independent Python implementation of the same loop.
        assert_eq!(escape_time(0.3, 0.5, 500), 500);
        assert_eq!(escape_time(-0.75, 0.1, 500), 33);
    }

    /// The textbook loop, one escape test per iteration.
    fn plain_escape_time(x: f64, y: f64, max_iter: u32) -> u32 {
        let (mut zr, mut zi) = (0.0f64, 0.0f64);
        for i in 0..max_iter {
            let (zr2, zi2) = (zr * zr, zi * zi);
            if zr2 + zi2 > 4.0 {
                return i;
            }
            zi = 2.0 * zr * zi + y;
            zr = zr2 - zi2 + x;
        }
        max_iter
    }

    #[test]
    fn blocked_iteration_counts_exactly_like_the_plain_loop() {
        for max_iter in [0, 1, 7, 8, 9, 100, 1003] {
            for row in 0..60 {
                for column in 0..80 {
                    let (x, y) = (
                        -2.2 + f64::from(column) * 0.04,
                        -1.2 + f64::from(row) * 0.04,
                    );
                    assert_eq!(
                        escape_time(x, y, max_iter),
                        plain_escape_time(x, y, max_iter),
                        "c = ({x}, {y}), max_iter {max_iter}"
                    );
                }
            }
        }
    }

    #[test]
    fn tiles_cover_the_image_exactly_once() {
        let mut covered = [0u8; 10 * 7];
        for index in 0..6 {
            let (x0, y0, x1, y1) = tile_bounds(index, 3, 2, 10, 7);
            for y in y0..y1 {
                for x in x0..x1 {
                    covered[(y * 10 + x) as usize] += 1;
                }
            }
        }
        assert!(covered.iter().all(|&c| c == 1));
    }

    #[test]
    fn tiles_assemble_into_the_whole_picture() {
        let view = View {
            width: 30,
            height: 20,
            cx: -0.5,
            cy: 0.0,
            scale: 0.1,
            max_iter: 100,
        };
        let dir = std::env::temp_dir().join(format!("mandelbrot-test-{}", std::process::id()));
        for index in 0..6 {
            let (x0, y0, x1, y1) = tile_bounds(index, 3, 2, 30, 20);
            let tile = render(&view, (x0, y0, x1, y1));
            let tile_dir = dir.join(index.to_string());
            std::fs::create_dir_all(&tile_dir).expect("mkdir");
            std::fs::write(tile_dir.join("tile.pgm"), pgm(x1 - x0, y1 - y0, &tile)).expect("write");
        }
        let out = dir.join("whole.png");
        let out_text = out.to_str().expect("utf-8");
        assemble(dir.to_str().expect("utf-8"), "3", "2", out_text).expect("assembles");
        let png_bytes = std::fs::read(&out).expect("png");
        let whole = render(&view, (0, 0, 30, 20));
        assert_eq!(
            png_bytes,
            png::encode_grey(30, 20, &whole),
            "same as rendering in one piece"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
