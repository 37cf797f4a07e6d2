use super::*;

fn summary(median: f64, min: f64, max: f64, n: usize) -> Summary {
    Summary {
        median,
        min,
        max,
        n,
    }
}

fn case(model: &str, task: &str, speedup: f64, target: f64) -> CaseRow {
    CaseRow {
        model: model.into(),
        task: task.into(),
        batch: 64,
        threads: 1,
        params: Some(1000),
        target,
        elbo_ms: summary(4.0, 3.5, 5.0, 6),
        pytorch_ms: summary(4.0 * speedup, 4.0 * speedup - 1.0, 4.0 * speedup + 1.0, 6),
        pytorch_fused_ms: Some(summary(4.5, 4.0, 5.5, 6)),
        speedup,
        speedup_range: [1.0, 2.0],
        speedup_vs_fused: Some(1.2),
        speedup_vs_fused_range: Some([0.8, 1.6]),
        elbo_peak_rss_mib: 120.0,
        pytorch_peak_rss_mib: 600.0,
        elbo_faults_per_step: Some(11.0),
        pytorch_faults_per_step: None,
        elbo_peak_device_mib: None,
        pytorch_peak_device_mib: None,
        data: None,
        efficiency: None,
        variants: Vec::new(),
        failed_variants: Vec::new(),
        best: None,
    }
}

/// A report of every kind of row and every optional part.
pub(crate) fn example() -> Report {
    let mut vae = case("vae-mlp", "train", 1.5, 1.25);
    vae.batch = 128;
    vae.data = Some(DataShare {
        elbo_data_ms: 0.25,
        data_share: 0.25 / 4.25,
    });
    let mut unet = case("ddpm-mnist", "train", 1.1, 1.05);
    unet.efficiency = Some(Efficiency {
        forward_flops_per_example: 5e8,
        elbo_gflops: 24.0,
        matmul_peak_gflops: 40.0,
        efficiency: 0.6,
        efficiency_per_round: vec![0.6, 0.5, 0.75],
        efficiency_rounds: vec![
            EfficiencyRound {
                elbo_gflops: 24.0,
                matmul_peak_gflops: 40.0,
            },
            EfficiencyRound {
                elbo_gflops: 20.0,
                matmul_peak_gflops: 40.0,
            },
            EfficiencyRound {
                elbo_gflops: 30.0,
                matmul_peak_gflops: 40.0,
            },
        ],
    });
    unet.variants = vec![VariantRow {
        variant: "compiled".into(),
        ms: summary(4.4, 4.2, 4.6, 6),
        speedup: 1.1,
        first_step_s: Some(61.5),
        peak_rss_mib: 900.0,
    }];
    unet.best = Some(Best {
        variant: "compiled, fused Adam".into(),
        ms: summary(4.4, 4.2, 4.6, 6),
        speedup: 1.1,
        speedup_range: [0.84, 1.31],
    });
    let mut sample = case("ddpm-mnist", "sample", 0.9, 1.05);
    // Sampling: no optimiser, no fused-Adam run.
    sample.pytorch_fused_ms = None;
    sample.speedup_vs_fused = None;
    sample.speedup_vs_fused_range = None;
    sample.best = Some(Best {
        variant: "eager".into(),
        ms: sample.pytorch_ms,
        speedup: 0.9,
        speedup_range: [0.6, 1.2],
    });
    let matmul = MatmulRun {
        side: "elbo".into(),
        model: "matmul".into(),
        task: "matmul".into(),
        size: 1024,
        threads: 1,
        step_ms: vec![24.0, 23.9],
        faults_per_step: Some(0.0),
        gflops: Some(90.0),
        peak_rss_mib: None,
        dtype: None,
        device: None,
    };
    Report {
        machine: Machine {
            cpu: "test cpu".into(),
            cores: 2,
            loadavg_at_end: "0.10 0.20 0.30 1/100 42".into(),
        },
        command: "bench --with-pytorch".into(),
        unix_time: 1_700_000_000,
        protocol: Protocol {
            rounds: 3,
            warmup: 10,
            reps: 5,
            steps: 10,
        },
        setting: RunSetting::default(),
        rows: vec![
            Row::Matmul(Box::new(MatmulRow {
                threads: 1,
                elbo: matmul,
            })),
            Row::Case(Box::new(vae)),
            Row::Case(Box::new(unet)),
            Row::Case(Box::new(sample)),
        ],
    }
}

#[test]
fn a_report_read_back_from_its_json_is_the_same_report_with_the_same_markdown() {
    let report = example();
    let json = serde_json::to_string_pretty(&report).unwrap();
    let back: Report = serde_json::from_str(&json).unwrap();
    assert_eq!(back, report);
    assert_eq!(markdown(&back), markdown(&report));
}

#[test]
fn the_json_keeps_the_field_names_of_the_untyped_report() {
    let value = serde_json::to_value(example()).unwrap();
    assert_eq!(value["machine"]["cores"], 2);
    assert_eq!(value["protocol"]["rounds"], 3);
    let matmul = &value["rows"][0];
    assert_eq!(matmul["kind"], "matmul");
    assert_eq!(matmul["elbo"]["gflops"], 90.0);
    assert!(matmul["elbo"]["peak_rss_mib"].is_null());
    let vae = &value["rows"][1];
    assert_eq!(vae["kind"], "case");
    assert_eq!(vae["speedup"], 1.5);
    assert_eq!(vae["speedup_range"], serde_json::json!([1.0, 2.0]));
    assert_eq!(vae["elbo_ms"]["median"], 4.0);
    assert_eq!(vae["elbo_ms"]["n"], 6);
    assert_eq!(vae["elbo_data_ms"], 0.25);
    assert!(vae["pytorch_faults_per_step"].is_null());
    assert!(
        vae.get("efficiency").is_none(),
        "no efficiency keys without one"
    );
    let unet = &value["rows"][2];
    assert!(unet.get("data_share").is_none());
    assert_eq!(unet["efficiency"], 0.6);
    assert_eq!(
        unet["efficiency_per_round"],
        serde_json::json!([0.6, 0.5, 0.75])
    );
    assert_eq!(unet["efficiency_rounds"][1]["elbo_gflops"], 20.0);
    assert_eq!(unet["forward_flops_per_example"], 5e8);
}

#[test]
fn a_ratio_that_is_not_finite_is_written_as_null_and_read_back_as_nan() {
    let mut report = example();
    if let Row::Case(row) = &mut report.rows[1] {
        row.speedup = f64::INFINITY;
        row.speedup_range = [f64::NAN, 2.0];
    }
    let json = serde_json::to_string(&report).unwrap();
    assert!(
        json.contains(r#""speedup":null,"speedup_range":[null,2.0]"#),
        "{json}"
    );
    let back: Report = serde_json::from_str(&json).unwrap();
    let row = back.cases().next().unwrap();
    assert!(row.speedup.is_nan() && row.speedup_range[0].is_nan());
    assert!(markdown(&back).contains("**NaNx** (NaN-2.00)"));
}

#[test]
fn the_markdown_has_a_line_per_case_and_the_paragraphs_of_what_was_measured() {
    let md = markdown(&example());
    assert!(md.starts_with(
        "Machine: test cpu (2 cores), load at the end 0.10 0.20 0.30 1/100 42; \
         `cargo xtask bench --with-pytorch`; 3 rounds x 5 reps x 10 steps after 10 warm-up \
         steps.\n\n"
    ));
    assert!(md.contains(
        "| vae-mlp train (batch 128) | 1 | 4.00 (3.50-5.00) | 6.00 (5.00-7.00) | **1.50x** \
         (1.00-2.00) | 1.25x met | 4.50 (4.00-5.50) | 1.20x | 120 / 600 | 11 / NaN |\n"
    ));
    assert!(md.contains("**0.90x** (1.00-2.00) | 1.05x missed"), "{md}");
    assert!(md.contains(
        "\nData pipeline, vae-mlp (threads 1): 0.250 ms per batch of 128, 5.9% of a training \
         step plus its batch."
    ));
    assert!(md.contains("per round 0.60, 0.50, 0.75: median 0.60 (target 0.5: met)."));
    assert!(md.contains("0.500 GFLOP forward per example"), "{md}");
    assert!(md.ends_with(
        "\nfp32 matmul peak of libtorch here (1 thread(s), 1024 x 1024) at the start of the \
         run: 90.0 GFLOP/s.\n"
    ));
    // Twice in the first table, twice in the table of PyTorch at its best.
    assert_eq!(md.matches("| ddpm-mnist").count(), 4);
    assert!(md.contains("| - (no optimiser) | - |"), "{md}");
}

#[test]
fn the_best_pytorch_table_names_the_fastest_variant_and_judges_the_goal() {
    let md = markdown(&example());
    assert!(md.contains("PyTorch at its best"), "{md}");
    assert!(md.contains(
        "| case | threads | elbo | eager, default Adam | eager, fused Adam | compiled | best \
         PyTorch | elbo over best | goal 1.00x |\n"
    ));
    assert!(
        md.contains(
            "| ddpm-mnist train (batch 64) | 1 | 4.00 | 4.40 | 4.50 | 4.40 (61.5 s) | compiled, \
         fused Adam | **1.10x** (0.84-1.31) | met |\n"
        ),
        "{md}"
    );
    assert!(
        md.contains(
            "| ddpm-mnist sample (batch 64) | 1 | 4.00 | 3.60 | - | - | eager | **0.90x** \
         (0.60-1.20) | missed |\n"
        ),
        "{md}"
    );
    // The vae row has no best (a report of before the variants): not in the table.
    assert_eq!(md.matches("| vae-mlp").count(), 1);
}

#[test]
fn a_variant_that_failed_is_named_with_its_reason_and_left_out_of_its_row() {
    let mut report = example();
    let Some(Row::Case(row)) = report
        .rows
        .iter_mut()
        .find(|r| matches!(r, Row::Case(c) if c.model == "ddpm-mnist" && c.task == "train"))
    else {
        panic!("the example has a ddpm-mnist training row")
    };
    row.failed_variants = vec![(
        "channels-last".into(),
        "steptime.py failed (exit status: 1): RuntimeError: no kernel".into(),
    )];
    let md = markdown(&report);
    assert!(
        md.contains(
            "PyTorch (channels-last) failed on ddpm-mnist train (batch 64, threads 1), left out \
             of its row: steptime.py failed (exit status: 1): RuntimeError: no kernel"
        ),
        "{md}"
    );
    // Read back from its JSON, the failure is still there.
    let json = serde_json::to_string(&report).unwrap();
    let back: Report = serde_json::from_str(&json).unwrap();
    assert_eq!(markdown(&back), md);
}

#[test]
fn a_cuda_report_states_its_setting_throughput_and_device_memory() {
    let mut report = example();
    report.setting = RunSetting {
        device: "cuda:0".into(),
        autocast: "bf16".into(),
        tf32: false,
    };
    if let Row::Matmul(m) = &mut report.rows[0] {
        m.elbo.dtype = Some("bf16".into());
        m.elbo.size = 8192;
    }
    if let Row::Case(row) = &mut report.rows[2] {
        row.elbo_peak_device_mib = Some(2048.0);
        row.pytorch_peak_device_mib = Some(3072.0);
    }
    let md = markdown(&report);
    assert!(
        md.contains(
            "Device cuda:0, autocast bf16, TF32 for float32 matmuls and convolutions off (both \
         sides)."
        ),
        "{md}"
    );
    // 64 images in 4 ms: 16,000 images/s; PyTorch's best 4.4 ms.
    assert!(
        md.contains(
            "Throughput, ddpm-mnist train (batch 64): elbo 16000.0 images/s, best PyTorch 14545.5; \
         peak device memory elbo 2048 MiB, PyTorch (eager) 3072 MiB."
        ),
        "{md}"
    );
    assert!(md.contains("over the bf16 matmul peak measured"), "{md}");
    assert!(
        md.contains("bf16 matmul peak of libtorch on cuda:0 (8192 x 8192)"),
        "{md}"
    );
    let back: Report = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
    assert_eq!(back, report);
}

#[test]
fn a_report_of_before_the_variants_and_cuda_still_reads() {
    // What the report of the previous schema holds: no setting, no variants, no best,
    // no device memory, a fused-Adam column on every row.
    let mut value = serde_json::to_value(example()).unwrap();
    value.as_object_mut().unwrap().remove("setting");
    for row in value["rows"].as_array_mut().unwrap() {
        for key in [
            "variants",
            "best",
            "elbo_peak_device_mib",
            "pytorch_peak_device_mib",
        ] {
            row.as_object_mut().unwrap().remove(key);
        }
    }
    let back: Report = serde_json::from_value(value).unwrap();
    assert_eq!(back.setting, RunSetting::default());
    assert!(
        back.cases()
            .all(|row| row.best.is_none() && row.variants.is_empty())
    );
    assert_eq!(back.cases().next().unwrap().speedup_vs_fused, Some(1.2));
}
