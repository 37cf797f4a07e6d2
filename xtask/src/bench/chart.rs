//! The comparison chart: one bar per case, its length the speed-up of elbo over the
//! fastest PyTorch variant (over eager PyTorch in a report without variants), a line at
//! parity and a tick at the goal: 1.0 against the best, the case's target against eager
//! (drawn by `elbo-plot`).

use elbo_plot::{Bar, BarChart};

use super::report::Report;

/// The bar chart of a report's cases.
pub fn speedups(report: &Report) -> BarChart {
    BarChart {
        title: "elbo vs PyTorch at its best, same libtorch".into(),
        axis_label: "speed-up over the fastest PyTorch".into(),
        unit: "x".into(),
        reference: Some(1.0),
        bars: report
            .cases()
            .map(|row| Bar {
                label: format!("{} {} {}T", row.model, row.task, row.threads),
                value: row.best.as_ref().map_or(row.speedup, |b| b.speedup),
                target: Some(if row.best.is_some() { 1.0 } else { row.target }),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::tests::example;

    #[test]
    fn one_bar_per_case_with_its_target() {
        let chart = speedups(&example());
        let labels: Vec<&str> = chart.bars.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "vae-mlp train 1T",
                "ddpm-mnist train 1T",
                "ddpm-mnist sample 1T"
            ]
        );
        // vae-mlp has no best (a report of before the variants): eager and its target.
        assert_eq!(chart.bars[0].value, 1.5);
        assert_eq!(chart.bars[0].target, Some(1.25));
        // The UNet's best is compiled PyTorch: its ratio, against 1.0.
        assert_eq!(chart.bars[1].value, 1.1);
        assert_eq!(chart.bars[1].target, Some(1.0));
        assert_eq!(chart.bars[2].value, 0.9);
        assert_eq!(chart.reference, Some(1.0));
    }

    #[test]
    fn the_chart_is_a_png_with_a_bar_that_met_its_target_and_one_that_missed_it() {
        let bytes = elbo_plot::render_bars(&speedups(&example())).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        let canvas = elbo_plot::draw_bars(&speedups(&example())).unwrap();
        assert_eq!(
            (info.width as usize, info.height as usize),
            (canvas.width(), canvas.height())
        );
        let pixels: Vec<[u8; 3]> = buf[..info.buffer_size()]
            .chunks(3)
            .map(|p| [p[0], p[1], p[2]])
            .collect();
        // The first case met its target (green), the second missed it (orange).
        assert!(pixels.contains(&elbo_plot::MET));
        assert!(pixels.contains(&elbo_plot::MISSED));
        assert!(pixels.contains(&elbo_plot::TARGET));
    }
}
