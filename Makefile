# Two commands on a fresh machine: `make demo` and `make test` (both create .venv first).
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1
DEMO := logs/demo

.PHONY: venv demo test report clean-demo wheels

venv: .venv/.installed
.venv/.installed: requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# The main pipeline end to end on the embedded tiny model, on the CPU.
demo: venv
	$(PY) scripts/txt2img.py --base_path $(DEMO)/fp16 --num_imgs 8 --batch_size 4
	$(PY) scripts/quant_txt2img.py --wbits 8 --abits 8 --base_path $(DEMO)/w8a8 --image_folder $(DEMO)/w8a8/images --num_imgs 8 --batch_size 4
	$(PY) scripts/quant_txt2img.py --wbits 6 --abits 8 --base_path $(DEMO)/w6a8 --image_folder $(DEMO)/w6a8/images --num_imgs 8 --batch_size 4
	$(PY) scripts/quant_txt2img.py --wbits 4 --abits 8 --base_path $(DEMO)/w4a8 --image_folder $(DEMO)/w4a8/images --num_imgs 8 --batch_size 4
	$(PY) scripts/eval_fp16_mixdq_cleanfid.py --fp16_folder $(DEMO)/fp16/generated_images --mixdq_folder $(DEMO)/w8a8/images --ref_folder $(DEMO)/eval/synthetic_ref --synthetic_ref 8 --feature_extractor random --clip_pretrained none --device cpu --out $(DEMO)/eval/fid_clip.csv  # plumbing check: random weights, synthetic reference
	$(PY) mixed_precision_scripts/sensitivity.py --kind weight --bits 2 4 8 --layers '^conv_in$$|mid_block.*blocks.0.(attn2.to_k|ff.net.2)' --num_imgs 2 --batch_size 2 --out_dir $(DEMO)/sensitivity && $(PY) mixed_precision_scripts/bit_allocation.py --sensitivity_dir $(DEMO)/sensitivity --target_bits 4.0 6.0 --out_dir $(DEMO)/bit_configs  # mixed precision: sensitivity of 3 layers -> ILP
	$(PY) scripts/bench_e2e.py --modes fp16 w8a8 --vae_kinds fp16 int8 tiny --cells 64x1 64x2 --repeats 2 --out $(DEMO)/e2e/e2e.csv && $(PY) scripts/plot_e2e.py $(DEMO)/e2e/e2e.csv  # the whole image per (UNet, decoder), one run (CPU: plumbing, the timings mean nothing)
	$(PY) scripts/load_test_stub.py --live --quantize_live --res 64 --ladder 64 32 --patterns poisson --load 0.5 0.9 --wbits 8 4 --num_requests 8 --base_path $(DEMO) --run_name live && $(PY) scripts/plot_mixdq_queue_results.py $(DEMO)/queue_tests/live/mixdq_queue_results.csv  # load test: live tiny W8A8 and W4A8 models (checkpoints from the quant_txt2img steps) vs the simulator

# Rebuild the report's figures from the committed CSVs in results/ (reads CSVs only: no model, no GPU).
# The one list of latency grids the performance model is fitted to (docs/performance.md quotes the same command).
# A rerun on the same CSVs leaves every committed file byte for byte as it is.
LATENCY_CSVS := results/latency_fp16.csv results/latency_fp16_eager.csv results/latency_w4a8.csv results/latency_w6a8.csv results/latency_w8a8.csv
# The whole image on the H200 serving path (v7, one bench_e2e call per cell): the headline and its performance model
# (the tiny decoder left out: measured at two cells whose pixel counts are equal, so resolution and batch cannot be told apart)
# Issue 15's UNet-step table on the H200 (four calls; W4A8 at 512x4 twice: the first call's row is plotted)
KERNELS_H200_CSVS := results/kernels_unet_compile_onerun_nvidia_h200.csv results/kernels_unet_compile_nvidia_h200.csv results/kernels_unet_compile_w4a8_nvidia_h200.csv results/kernels_unet_compile_512x4_768_nvidia_h200.csv results/kernels_unet_compile_w4a8_768x4_nvidia_h200.csv
E2E_V7_CSVS := results/e2e_v7_nhwc_1024x4_nvidia_h200.csv results/e2e_v7_1024x1_nvidia_h200.csv results/e2e_v7_512x4_nvidia_h200.csv results/e2e_v7_nhwc_512x1_nvidia_h200.csv
# The serving grids on the H200 path (latency_probe --exec compile: compiled blocks + compiled VAE + CUDA graphs;
# one CSV per call and mode; every cell of FP16 and W8A8 at 512/768/1024 x 1/4 and 512/1024 x 2) and the performance model, sweep and GPU count on them
LATENCY_H200_CSVS := $(sort $(wildcard results/latency_h200_compile/*.csv))
report: venv
	$(PY) scripts/fit_perf_model.py --csv $(LATENCY_CSVS) --out results/perf_model.json --plot results/latency_vs_res.png
	$(PY) scripts/plot_mixdq_queue_results.py results/queue_sweep/mixdq_queue_results.csv
	$(PY) scripts/plot_mixdq_queue_results.py results/queue_sweep_load/mixdq_queue_results.csv
	$(PY) scripts/plot_e2e.py results/e2e_nvidia_h200.csv
	$(PY) scripts/plot_e2e.py results/e2e_v6_1024x4_nvidia_h200.csv results/e2e_v6_1024x1_nvidia_h200.csv results/e2e_v6_512x1_nvidia_h200.csv --out results/e2e_v6_nvidia_h200.png
	$(PY) scripts/plot_e2e.py $(E2E_V7_CSVS) --out results/e2e_v7_nvidia_h200.png
	$(PY) scripts/plot_e2e.py results/e2e_v8_fused_vae_nvidia_h200.csv results/e2e_v8_fused_vae_512x1_nvidia_h200.csv results/e2e_v8_lowbit_512x1_nvidia_h200.csv --out results/e2e_v8_nvidia_h200.png
	$(PY) scripts/plot_e2e.py results/e2e_v9_ptx_vae_nvidia_h200.csv results/e2e_v9_ptx_vae_512x1_nvidia_h200.csv results/e2e_v9_w6a8_512x1_nvidia_h200.csv --out results/e2e_v9_nvidia_h200.png
	$(PY) scripts/plot_e2e.py results/e2e_v12_nvidia_h200.csv results/e2e_v12_b1_nvidia_h200.csv --out results/e2e_v12_nvidia_h200.png
	$(PY) scripts/plot_e2e.py results/e2e_v10_nvidia_h200.csv results/e2e_v9_ptx_vae_512x1_nvidia_h200.csv results/e2e_v9_w6a8_512x1_nvidia_h200.csv --out results/e2e_v10_nvidia_h200.png
	$(PY) scripts/plot_e2e.py results/e2e_v7_lowbit_1024x4_nvidia_h200.csv results/e2e_v7_w6a8_1024x4_nvidia_h200.csv --out results/e2e_v7_mixed_1024x4_nvidia_h200.png
	$(PY) scripts/fit_perf_model.py --csv $(E2E_V7_CSVS) --modes fp16 w8a8 fp16+int8 w8a8+int8 --out results/perf_model_h200_v7.json --plot results/latency_vs_res_h200_v7.png
	$(PY) scripts/plot_mixdq_queue_results.py results/queue_sweep_h200_v7/mixdq_queue_results.csv
	$(PY) scripts/fit_perf_model.py --csv $(LATENCY_H200_CSVS) --out results/perf_model_h200.json --plot results/latency_vs_res_h200.png
	$(PY) scripts/plot_mixdq_queue_results.py results/queue_sweep_h200/mixdq_queue_results.csv
	$(PY) scripts/plot_kernels.py $(KERNELS_H200_CSVS) --keep first --out results/kernels_unet_compile_nvidia_h200.png
	$(PY) scripts/plot_mixdq_queue_results.py results/serve_nvidia_h200/gap_probe/live_vs_direct/mixdq_queue_results.csv
	$(PY) scripts/plot_mixdq_queue_results.py results/serve_nvidia_h200/png_crc_on_host/live_vs_direct/mixdq_queue_results.csv

test: venv  # the CPU-bound tests on two workers (pytest-xdist; a module stays on one), then the service's alone:
	$(PY) -m pytest -q -n 2 --dist loadfile tests --ignore tests/test_server.py
	$(PY) -m pytest -q tests/test_server.py  # its replicas calibrate their service time, its SLO and batching tests need an idle CPU

clean-demo:
	rm -rf $(DEMO)

# Wheels the GPU machine lacks (it has torch/Triton/transformers but no diffusers); carried with `run`.
wheels:
	$(PY) -m pip download -q --no-deps -d wheels diffusers==0.42.1 importlib_metadata open_clip_torch==3.3.0 ftfy wcwidth \
	    pytest pluggy iniconfig pygments pytest-xdist==3.8.0 execnet
