//! Tests of the comparison's arithmetic: a case's row from each side's runs, PyTorch's
//! variants and the fastest of them, the data share and the step's efficiency.

use super::*;
use crate::bench::cases::CASES;
use crate::bench::report::{self, Machine, MatmulRow, Protocol, Report, Row, markdown};

fn run(side: &str, params: i64, ms: &[f64], rss: f64) -> StepRun {
    // Page faults per step: 10 per MiB of peak, something to tell the sides apart by.
    StepRun {
        side: side.into(),
        params: Some(params),
        step_ms: ms.to_vec(),
        peak_rss_mib: Some(rss),
        faults_per_step: Some(rss / 10.0),
        ..StepRun::default()
    }
}

fn times(ms: &[f64]) -> StepRun {
    StepRun {
        step_ms: ms.to_vec(),
        ..StepRun::default()
    }
}

fn peak(gflops: f64) -> MatmulRun {
    MatmulRun {
        gflops: Some(gflops),
        ..MatmulRun::default()
    }
}

#[test]
fn a_case_row_compares_medians_and_the_table_says_whether_the_target_is_met() {
    let case = CASES[0];
    let ours = [
        run("elbo", 10, &[4.0, 4.0], 100.0),
        run("elbo", 10, &[5.0], 120.0),
    ];
    let default = [run("pytorch", 10, &[6.0, 5.0, 7.0], 600.0)];
    let fused = [run("pytorch", 10, &[4.0], 610.0)];
    let row = case_row(&case, 1, &ours, &default, &fused).unwrap();
    assert_eq!(row.speedup, 1.5);
    assert_eq!(row.speedup_vs_fused, Some(1.0));
    assert_eq!(row.elbo_peak_rss_mib, 120.0);
    // Medians of the runs' own counts: elbo 10 and 12, PyTorch 60.
    assert_eq!(row.elbo_faults_per_step, Some(11.0));
    assert_eq!(row.pytorch_faults_per_step, Some(60.0));
    let report = Report {
        machine: Machine {
            cpu: "test cpu".into(),
            cores: 2,
            loadavg_at_end: "0.1".into(),
        },
        command: "bench --with-pytorch".into(),
        unix_time: 0,
        protocol: Protocol {
            rounds: 1,
            warmup: 1,
            reps: 1,
            steps: 1,
        },
        setting: report::RunSetting::default(),
        rows: vec![
            Row::Case(Box::new(row)),
            Row::Matmul(Box::new(MatmulRow {
                threads: 1,
                elbo: peak(90.0),
            })),
        ],
    };
    let md = markdown(&report);
    assert!(md.contains("**1.50x**"), "{md}");
    assert!(md.contains("1.25x met"), "{md}");
    assert!(md.contains("| 120 / 600 | 11 / 60 |"), "{md}");
    assert!(md.contains("90.0 GFLOP/s"), "{md}");
}

#[test]
fn the_unet_step_efficiency_is_three_forwards_over_the_matmul_peak() {
    let reference = [StepRun {
        forward_flops_per_example: Some(5e8),
        ..StepRun::default()
    }];
    let step = times(&[1000.0]);
    let one = std::slice::from_ref(&step);
    let mut row = case_row(&CASES[2], 1, one, one, one).unwrap();
    assert_eq!((row.task.as_str(), row.batch), ("train", 64));
    assert_eq!(row.elbo_ms.median, 1000.0);
    // Three rounds: each run's median step over the peak measured just before it.
    let ours = [
        times(&[900.0, 1000.0, 1100.0]),
        times(&[2000.0]),
        times(&[1000.0]),
    ];
    let peaks = [peak(192.0), peak(96.0), peak(120.0)];
    let e = efficiency(&row, &reference, &ours, &peaks).unwrap();
    // 3 x 5e8 x 64 FLOPs in 1 s = 96 GFLOP/s (the row's median step).
    assert_eq!(e.elbo_gflops, 96.0);
    // Rounds: 96/192 = 0.5, 48/96 = 0.5, 96/120 = 0.8; median 0.5.
    assert_eq!(e.efficiency_per_round, [0.5, 0.5, 0.8]);
    assert_eq!(e.efficiency, 0.5);
    assert_eq!(e.matmul_peak_gflops, 120.0);
    assert_eq!(e.efficiency_rounds[1].elbo_gflops, 48.0);
    assert_eq!(e.efficiency_rounds[1].matmul_peak_gflops, 96.0);
    // A round whose peak printed no GFLOP/s is left out of the pairs.
    let gaps = [peak(192.0), MatmulRun::default(), peak(120.0)];
    let e = efficiency(&row, &reference, &ours, &gaps).unwrap();
    assert_eq!(e.efficiency_per_round, [0.5, 0.8]);
    // Sampling has no efficiency, nor has a model without a FLOP count.
    row.task = "sample".into();
    assert_eq!(efficiency(&row, &reference, &ours, &peaks), None);
    row.task = "train".into();
    assert_eq!(efficiency(&row, &ours, &ours, &peaks), None);
}

#[test]
fn the_data_share_is_a_batch_over_a_batch_plus_a_step() {
    let share = data_share(&times(&[1.0, 3.0, 1.0]), 9.0).unwrap();
    assert_eq!(share.elbo_data_ms, 1.0);
    assert_eq!(share.data_share, 0.1);
    assert_eq!(data_share(&times(&[]), 9.0), None);
}

#[test]
fn different_parameter_counts_are_refused() {
    let ours = [run("elbo", 10, &[4.0], 1.0)];
    let theirs = [run("pytorch", 11, &[4.0], 1.0)];
    let err = case_row(&CASES[0], 1, &ours, &theirs, &theirs).unwrap_err();
    assert!(err.to_string().contains("must be the same model"), "{err}");
    assert!(err.to_string().contains("Some(10)"), "{err}");
}

#[test]
fn a_side_without_times_is_named() {
    let ours = [run("elbo", 10, &[], 1.0)];
    let theirs = [run("pytorch", 10, &[4.0], 1.0)];
    let err = case_row(&CASES[1], 1, &ours, &theirs, &theirs).unwrap_err();
    assert_eq!(
        err.to_string(),
        "elbo reported no usable times for hvae-ladder"
    );
}

#[test]
fn the_best_pytorch_is_the_fastest_median_of_every_run_with_elbo_s_ratio_to_it() {
    let case = CASES[2];
    let ours = [run("elbo", 10, &[100.0, 110.0, 90.0], 1.0)];
    let default = [run("pytorch", 10, &[150.0], 1.0)];
    let fused = [run("pytorch", 10, &[140.0], 1.0)];
    let mut row = case_row(&case, 1, &ours, &default, &fused).unwrap();
    let compiled = [
        StepRun {
            first_step_s: Some(60.0),
            ..run("pytorch", 10, &[80.0, 82.0], 900.0)
        },
        StepRun {
            first_step_s: Some(20.0),
            ..run("pytorch", 10, &[81.0], 950.0)
        },
    ];
    let channels_last = [run("pytorch", 10, &[120.0], 700.0)];
    with_variants(
        &mut row,
        &ours,
        &[
            (VariantChoice::Compiled, &compiled),
            (VariantChoice::ChannelsLast, &channels_last),
        ],
    )
    .unwrap();
    assert_eq!(row.variants.len(), 2);
    let v = &row.variants[0];
    assert_eq!((v.variant.as_str(), v.ms.median), ("compiled", 81.0));
    assert_eq!(v.first_step_s, Some(40.0));
    assert_eq!(v.peak_rss_mib, 950.0);
    assert_eq!(v.speedup, 81.0 / 100.0);
    let best = row.best.as_ref().unwrap();
    assert_eq!(best.variant, "compiled, fused Adam");
    assert_eq!(best.speedup, 0.81);
    // Range: PyTorch's fastest over elbo's slowest, its slowest over elbo's fastest.
    assert_eq!(best.speedup_range, [80.0 / 110.0, 82.0 / 90.0]);
    // Without variants the best is the faster Adam.
    with_variants(&mut row, &ours, &[]).unwrap();
    assert_eq!(row.best.as_ref().unwrap().variant, "eager, fused Adam");
    assert!(row.variants.is_empty());
}

#[test]
fn a_variant_of_another_model_or_without_times_is_refused() {
    let ours = [run("elbo", 10, &[100.0], 1.0)];
    let theirs = [run("pytorch", 10, &[150.0], 1.0)];
    let mut row = case_row(&CASES[2], 1, &ours, &theirs, &theirs).unwrap();
    let other = [run("pytorch", 11, &[80.0], 1.0)];
    let err = with_variants(&mut row, &ours, &[(VariantChoice::Compiled, &other)]).unwrap_err();
    assert!(
        err.to_string().contains("PyTorch (compiled) Some(11)"),
        "{err}"
    );
    let empty = [run("pytorch", 10, &[], 1.0)];
    let err = with_variants(&mut row, &ours, &[(VariantChoice::ChannelsLast, &empty)]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "PyTorch (channels-last) reported no usable times for ddpm-mnist"
    );
}

#[test]
fn sampling_has_no_fused_adam_run_and_its_best_is_named_without_an_optimiser() {
    let ours = [run("elbo", 10, &[100.0], 1.0)];
    let eager = [run("pytorch", 10, &[90.0], 1.0)];
    let mut row = case_row(&CASES[3], 1, &ours, &eager, &[]).unwrap();
    assert_eq!((row.pytorch_fused_ms, row.speedup_vs_fused), (None, None));
    let compiled = [run("pytorch", 10, &[95.0], 1.0)];
    with_variants(&mut row, &ours, &[(VariantChoice::Compiled, &compiled)]).unwrap();
    let best = row.best.unwrap();
    assert_eq!((best.variant.as_str(), best.speedup), ("eager", 0.9));
}
