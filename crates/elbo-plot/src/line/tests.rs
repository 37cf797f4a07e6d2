use super::*;
use crate::MAX_SIDE;

fn series(name: &str, points: &[(f64, f64)], style: Style) -> Series {
    Series {
        name: name.into(),
        points: points.to_vec(),
        style,
    }
}

fn panel(title: &str, series: Vec<Series>) -> Panel {
    Panel {
        title: title.into(),
        x_label: "epoch".into(),
        series,
    }
}

/// Whether `colour` is within a pixel of the point `at`.
fn near(canvas: &Canvas, at: (f64, f64), colour: Rgb) -> bool {
    let (x, y) = (at.0.round() as usize, at.1.round() as usize);
    (x - 1..=x + 1).any(|x| (y - 1..=y + 1).any(|y| canvas.pixel(x, y) == Some(colour)))
}

fn count_in(canvas: &Canvas, area: &PlotArea, colour: Rgb) -> usize {
    let (xs, ys) = (
        area.left as usize..area.right as usize,
        area.top as usize..area.bottom as usize,
    );
    ys.flat_map(|y| xs.clone().map(move |x| (x, y)))
        .filter(|&(x, y)| canvas.pixel(x, y) == Some(colour))
        .count()
}

#[test]
fn the_png_decodes_to_a_grid_of_panels_three_to_a_row() {
    let panels: Vec<Panel> = (0..5)
        .map(|i| {
            let points: Vec<(f64, f64)> = (0..30).map(|e| (e as f64, (i * e) as f64)).collect();
            panel(
                &format!("panel {i}"),
                vec![series("train", &points, Style::Line)],
            )
        })
        .collect();
    let figure = Figure {
        title: "five panels".into(),
        panels,
    };
    let bytes = render(&figure).unwrap();
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let layout = layout(&figure);
    assert_eq!(info.width as usize, 2 * MARGIN + 3 * PANEL_W + 2 * GAP);
    let title_band = text_height(SCALE) + MARGIN;
    assert_eq!(
        info.height as usize,
        2 * MARGIN + title_band + 2 * layout.panel_h + GAP
    );
    assert_eq!(&buf[..info.buffer_size()], draw(&figure).unwrap().pixels());
    // The 4th panel starts the second row, under the first.
    assert_eq!(layout.origins[3].0, layout.origins[0].0);
    assert!(layout.origins[3].1 > layout.origins[2].1);
    assert_eq!(columns(2), 2);
    assert_eq!(columns(4), 2);
    assert_eq!(columns(9), 3);
}

#[test]
fn points_are_drawn_in_their_series_colour_where_they_map() {
    let figure = Figure {
        title: String::new(),
        panels: vec![panel(
            "loss",
            vec![
                series("train", &[(1.0, 10.0), (9.0, 90.0)], Style::Line),
                series("test", &[(5.0, 20.0)], Style::Dots),
            ],
        )],
    };
    let canvas = draw(&figure).unwrap();
    let area = &layout(&figure).areas[0];
    let (x_axis, y_axis) = area.axes.as_ref().unwrap();
    assert!(x_axis.min <= 1.0 && x_axis.max >= 9.0, "{x_axis:?}");
    assert!(y_axis.min <= 10.0 && y_axis.max >= 90.0, "{y_axis:?}");
    let [train, test] = [PALETTE[0], PALETTE[1]];
    let at = |x, y| area.map(x, y).unwrap();
    // Both ends of the train line and its middle.
    assert!(near(&canvas, at(1.0, 10.0), train));
    assert!(near(&canvas, at(9.0, 90.0), train));
    assert!(near(&canvas, at(5.0, 50.0), train));
    assert!(at(9.0, 90.0).1 < at(1.0, 10.0).1, "y grows upwards");
    // The test dot, and no test colour away from it.
    assert!(near(&canvas, at(5.0, 20.0), test));
    assert!(!near(&canvas, at(5.0, 80.0), test));
    assert!(!near(&canvas, at(2.0, 80.0), train));
}

#[test]
fn non_finite_points_are_skipped_and_break_the_line() {
    let points = [
        (1.0, 1.0),
        (2.0, f64::NAN),
        (3.0, f64::INFINITY),
        (4.0, 2.0),
        (5.0, 3.0),
        (f64::NAN, 5.0),
        (6.0, f64::NEG_INFINITY),
    ];
    let train = series("train", &points, Style::Line);
    assert_eq!(legend_label(&train), "train (4 non-finite skipped)");
    let figure = Figure {
        title: "a diverged run".into(),
        panels: vec![panel("loss", vec![train])],
    };
    let canvas = draw(&figure).unwrap();
    let area = &layout(&figure).areas[0];
    let (x_axis, y_axis) = area.axes.as_ref().unwrap();
    assert!(
        y_axis.min <= 1.0 && (3.0..=5.0).contains(&y_axis.max),
        "{y_axis:?}"
    );
    assert!(x_axis.max <= 10.0, "{x_axis:?}");
    let colour = PALETTE[0];
    let at = |x, y| area.map(x, y).unwrap();
    // (1, 1) has no finite neighbour: a dot. (4, 2) to (5, 3) is a line.
    assert!(near(&canvas, at(1.0, 1.0), colour));
    assert!(near(&canvas, at(4.5, 2.5), colour));
    // Nothing joins (1, 1) to (4, 2) across the skipped points.
    assert!(!near(&canvas, at(2.5, 1.5), colour));
}

#[test]
fn equal_values_and_a_single_point_are_drawn_inside_the_frame() {
    let flat = series("flat", &[(0.0, 7.0), (1.0, 7.0), (2.0, 7.0)], Style::Line);
    let single = series("once", &[(3.0, -4.0e3)], Style::Line);
    let figure = Figure {
        title: String::new(),
        panels: vec![panel("flat", vec![flat]), panel("single", vec![single])],
    };
    let canvas = draw(&figure).unwrap();
    let layout = layout(&figure);
    let (flat_area, single_area) = (&layout.areas[0], &layout.areas[1]);
    let (_, y_axis) = flat_area.axes.as_ref().unwrap();
    assert!(y_axis.min < 7.0 && y_axis.max > 7.0, "{y_axis:?}");
    let (x, y) = flat_area.map(1.0, 7.0).unwrap();
    assert!(y > flat_area.top && y < flat_area.bottom && x.is_finite());
    assert!(near(&canvas, (x, y), PALETTE[0]));
    // The single point is a dot in the middle of its panel, and nothing else there is
    // in its colour.
    let (x, y) = single_area.map(3.0, -4.0e3).unwrap();
    let middle = (
        (single_area.left + single_area.right) / 2.0,
        (single_area.top + single_area.bottom) / 2.0,
    );
    assert!(
        (x - middle.0).abs() < 2.0 && (y - middle.1).abs() < 2.0,
        "{x}, {y}"
    );
    let dot = count_in(&canvas, single_area, PALETTE[0]);
    assert!((25..=45).contains(&dot), "{dot} pixels");
    // Its y ticks are negative numbers in thousands: labels such as "-4000".
    let (_, y_axis) = single_area.axes.as_ref().unwrap();
    assert!(
        y_axis
            .ticks
            .iter()
            .any(|&t| y_axis.label(t).starts_with('-'))
    );
}

#[test]
fn a_panel_with_nothing_to_plot_says_so() {
    let figure = Figure {
        title: "empty".into(),
        panels: vec![
            panel("no series", vec![]),
            panel(
                "only nan",
                vec![series("test", &[(1.0, f64::NAN)], Style::LineAndDots)],
            ),
            panel(
                "fine",
                vec![series("train", &[(1.0, 2.0), (2.0, 1.0)], Style::Line)],
            ),
        ],
    };
    let canvas = draw(&figure).unwrap();
    let layout = layout(&figure);
    assert!(layout.areas[0].axes.is_none() && layout.areas[1].axes.is_none());
    assert!(layout.areas[2].axes.is_some());
    let no_points = count_in(&canvas, &layout.areas[0], GREY);
    let no_finite_points = count_in(&canvas, &layout.areas[1], GREY);
    assert!(no_points > 0, "the message is written in the frame");
    assert!(no_finite_points > no_points, "a longer message");
    // A figure without panels is an image that says so, not an error.
    let empty = Figure::default();
    let canvas = draw(&empty).unwrap();
    assert!(canvas.pixels().chunks(3).any(|p| p == GREY));
}

#[test]
fn the_legend_wraps_and_the_panels_grow_with_it() {
    let many: Vec<Series> = (0..8)
        .map(|i| {
            series(
                &format!("a long series name {i}"),
                &[(0.0, i as f64)],
                Style::Dots,
            )
        })
        .collect();
    let rows = legend_rows(&panel("many", many.clone()));
    assert!(rows.len() >= 4, "{rows:?}");
    for row in &rows {
        let (_, text, x) = row.last().unwrap();
        assert!(x + SAMPLE + PAD + text_width(text, SCALE) <= PANEL_W - 2 * PAD);
    }
    let one = layout(&Figure {
        title: String::new(),
        panels: vec![panel("one", many[..1].to_vec())],
    });
    let all = layout(&Figure {
        title: String::new(),
        panels: vec![panel("many", many)],
    });
    assert_eq!(all.panel_h - one.panel_h, (rows.len() - 1) * LEGEND_ROW);
    // The 7th series takes the 1st colour again.
    let canvas = draw(&Figure {
        title: String::new(),
        panels: vec![panel(
            "wrap",
            (0..7)
                .map(|i| series("s", &[(i as f64, 0.0)], Style::Dots))
                .collect(),
        )],
    })
    .unwrap();
    assert!(canvas.pixels().chunks(3).any(|p| p == PALETTE[5]));
}

#[test]
fn too_many_panels_is_an_error_that_says_how_tall_the_image_would_be() {
    let figure = Figure {
        title: String::new(),
        panels: vec![Panel::default(); 300],
    };
    let err = render(&figure).unwrap_err();
    let height = layout(&figure).height;
    assert_eq!(
        err.to_string(),
        format!("expected an image height of 1 to {MAX_SIDE} pixels, found {height}")
    );
}

#[test]
fn write_leaves_the_png_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("curves.png");
    let figure = Figure {
        title: "curves".into(),
        panels: vec![panel(
            "loss",
            vec![series("train", &[(0.0, 1.0), (1.0, 0.5)], Style::Line)],
        )],
    };
    write(&path, &figure).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), render(&figure).unwrap());
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1);
}
