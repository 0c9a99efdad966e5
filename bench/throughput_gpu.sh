# Issue 11's GPU measurements in two calls of the lent H100 (each under 10 minutes), from the
# project root with .device-site/ and .device-assets/ carried (bench/README.md):
#
#   bash bench/throughput_gpu.sh short     # 32 short examples a step: relaxed checkpointing,
#                                          # no checkpointing, and the two experiments
#   bash bench/throughput_gpu.sh compiled  # the same with compiled layers, embeddings in bf16
#   bash bench/throughput_gpu.sh seq1024   # sequence length 1024: the qlora.py defaults'
#                                          # memory and unconstrained, against the plain loop
#   bash bench/throughput_gpu.sh trial     # qsweep trial, fast layout, against the plain loop
#                                          # padded on the same short rows
#   bash bench/throughput_gpu.sh profile   # profile of the compiled step, batch 16, more tokens
#   bash bench/throughput_gpu.sh adamw     # the fast layout with torch's fused AdamW: trial, unconstrained
#   bash bench/throughput_gpu.sh defaults  # train.packing: auto, the default, through qsweep trial
#   bash bench/throughput_gpu.sh defaults-again  # the same pair twice more, alternating
#
# Results land in $OUT (default bench/results/latest).
OUT=${OUT:-bench/results/latest}
mkdir -p "$OUT" /tmp/site
source bench/gpu_setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt"
case "$1" in
  short)
    timeout 270 python3 bench/layouts.py --steps 10 --variants \
      micro32,packed32-liger,packed32-liger-relax4,packed32-liger-relax8,packed32-liger-nockpt \
      --repeats 1 --out "$OUT/relaxed32.json" > "$OUT/relaxed32.log" 2>&1
    timeout 80 python3 bench/profile_step.py --no-profile --bf16-embeddings --out "$OUT/bf16_embeddings.json" \
      train.micro_batch_size=32 train.grad_accum_steps=1 train.packing=true train.kernels=auto \
      > "$OUT/bf16_embeddings.log" 2>&1
    timeout 120 python3 bench/profile_step.py --no-profile --compile-layers --warmup 4 --out "$OUT/compiled.json" \
      train.micro_batch_size=32 train.grad_accum_steps=1 train.packing=true \
      > "$OUT/compiled.log" 2>&1
    ;;
  compiled)
    timeout 540 python3 bench/layouts.py --steps 10 --warmup 3 --variants \
      micro32,packed32,packed32-compile,packed32-compile-bf16emb,packed32-compile-bf16emb-relax4,packed32-compile-liger-bf16emb,packed16,packed16-compile-bf16emb,packed32-compile-bf16emb-nockpt \
      --repeats 1 --out "$OUT/compiled32.json" > "$OUT/compiled32.log" 2>&1
    ;;
  final)   # what the first three calls left open, in one call
    timeout 60 python3 bench/train_throughput.py --model-dir /tmp/llama3-8b --steps 8 --impls reference \
      --configs qlora-defaults --out "$OUT/seq1024_reference.json" > "$OUT/seq1024_reference.log" 2>&1
    timeout 210 python3 bench/train_throughput.py --model-dir /tmp/llama3-8b --steps 8 --impls qsweep \
      --configs qlora-mb2-compile-bf16emb,nf4dq-mb4-compile-bf16emb \
      --out "$OUT/seq1024_compiled.json" > "$OUT/seq1024_compiled.log" 2>&1
    timeout 200 python3 bench/layouts.py --steps 10 --warmup 3 --variants \
      packed32-compile-flce,packed32-compile-bf16emb-nockpt \
      --repeats 1 --out "$OUT/compiled32_flce.json" > "$OUT/compiled32_flce.log" 2>&1
    ;;
  last)   # sequence length 1024 at its true length, within the qlora.py defaults' memory; compile again
    timeout 190 python3 bench/train_throughput.py --model-dir /tmp/llama3-8b --steps 8 \
      --configs qlora-defaults --out "$OUT/seq1024_defaults.json" > "$OUT/seq1024_defaults.log" 2>&1
    timeout 110 python3 bench/train_throughput.py --model-dir /tmp/llama3-8b --steps 8 --impls qsweep \
      --configs qlora-mb2-liger,qlora-mb4-liger --out "$OUT/seq1024_liger.json" > "$OUT/seq1024_liger.log" 2>&1
    timeout 150 python3 bench/layouts.py --steps 10 --warmup 3 --variants packed32,packed32-compile \
      --repeats 1 --out "$OUT/compiled32_again.json" > "$OUT/compiled32_again.log" 2>&1
    ;;
  trial)   # issue 11's "done when": qsweep trial against the plain loop on the same short rows
    timeout 150 python3 bench/train_throughput.py --model-dir /tmp/llama3-8b --rows mmlu-heldout --steps 8 \
      --impls reference --configs short-padded-mb32,short-padded-mb16 \
      --out "$OUT/short_reference.json" > "$OUT/short_reference.log" 2>&1
    timeout 240 python3 bench/trial_gpu.py --variants after --out "$OUT/trial_fast32.json" --timeout 230 \
      train.micro_batch_size=32 train.grad_accum_steps=1 train.packing=true train.compile=true \
      train.fp32_embeddings=false train.max_steps=30 > "$OUT/trial_fast32.log" 2>&1
    ;;
  profile)  # where the compiled step's time goes; the paper's batch of 16; more tokens a pass
    timeout 150 python3 bench/profile_step.py --warmup 4 --out "$OUT/profile_compiled32.json" \
      train.micro_batch_size=32 train.grad_accum_steps=1 train.packing=true train.compile=true \
      train.fp32_embeddings=false > "$OUT/profile_compiled32.log" 2>&1
    timeout 200 python3 bench/trial_gpu.py --variants after --out "$OUT/trial_fast16.json" --timeout 190 \
      train.micro_batch_size=16 train.grad_accum_steps=1 train.packing=true train.compile=true \
      train.fp32_embeddings=false train.max_steps=30 > "$OUT/trial_fast16.log" 2>&1
    timeout 220 python3 bench/layouts.py --steps 10 --warmup 3 --repeats 1 --variants \
      packed32-compile-bf16emb-adamw,packed128-compile-bf16emb-nockpt-adamw \
      --out "$OUT/more_tokens.json" > "$OUT/more_tokens.log" 2>&1
    ;;
  adamw)   # torch's fused AdamW (the profile: the paged optimizer's per-tensor launches bound the step)
    timeout 200 python3 bench/trial_gpu.py --variants after --out "$OUT/trial_fast32_adamw.json" --timeout 190 \
      train.micro_batch_size=32 train.grad_accum_steps=1 train.packing=true train.compile=true \
      train.fp32_embeddings=false train.optimizer=adamw train.max_steps=30 > "$OUT/trial_fast32_adamw.log" 2>&1
    timeout 220 python3 bench/layouts.py --steps 10 --warmup 3 --repeats 1 --variants \
      packed32-compile-bf16emb-nockpt-adamw,packed64-compile-bf16emb-nockpt-adamw \
      --out "$OUT/unconstrained.json" > "$OUT/unconstrained.log" 2>&1
    ;;
  evalfix)  # evaluation of compiled layers run eagerly (after) against compiling them (before:
            # .bench-before holds the commit before, `git archive HEAD~N | tar -x -C .bench-before`)
    FAST="train.packing=true train.compile=true train.fp32_embeddings=false train.optimizer=adamw train.max_steps=30"
    timeout 330 python3 bench/trial_gpu.py --variants after,before --before .bench-before --timeout 160 \
      --out "$OUT/trial_fast32_evalfix.json" train.micro_batch_size=32 train.grad_accum_steps=1 $FAST \
      > "$OUT/trial_fast32_evalfix.log" 2>&1
    timeout 160 python3 bench/trial_gpu.py --variants after --out "$OUT/trial_fast16_adamw.json" --timeout 150 \
      train.micro_batch_size=16 train.grad_accum_steps=1 $FAST > "$OUT/trial_fast16_adamw.log" 2>&1
    ;;
  defaults)  # train.packing: auto (the default) through qsweep trial: 32 a step with only the
             # micro-batch set, against train.packing=false in the same call; the paper's 16 a step
             # with train.micro_batch_size: auto
    STEPS="train.max_steps=20 train.grad_accum_steps=1"
    timeout 170 python3 bench/trial_gpu.py --variants after --out "$OUT/trial_default32.json" --timeout 160 \
      train.micro_batch_size=32 $STEPS > "$OUT/trial_default32.log" 2>&1
    timeout 190 python3 bench/trial_gpu.py --variants after --out "$OUT/trial_padded32.json" --timeout 180 \
      train.micro_batch_size=32 train.packing=false $STEPS > "$OUT/trial_padded32.log" 2>&1
    timeout 170 python3 bench/trial_gpu.py --variants after --out "$OUT/trial_auto16.json" --timeout 160 \
      train.micro_batch_size=auto train.batch_size=16 $STEPS > "$OUT/trial_auto16.log" 2>&1
    ;;
  defaults-again)  # the same pair twice more, alternating and padded first (the machine's drift)
    STEPS="train.max_steps=20 train.grad_accum_steps=1 train.micro_batch_size=32"
    for round in 1 2; do
      timeout 120 python3 bench/trial_gpu.py --variants after --out "$OUT/trial_padded32_r$round.json" \
        --timeout 110 $STEPS train.packing=false > "$OUT/trial_padded32_r$round.log" 2>&1
      timeout 100 python3 bench/trial_gpu.py --variants after --out "$OUT/trial_default32_r$round.json" \
        --timeout 90 $STEPS > "$OUT/trial_default32_r$round.log" 2>&1
    done
    ;;
  seq1024)
    timeout 200 python3 bench/train_throughput.py --model-dir /tmp/llama3-8b --steps 8 \
      --configs qlora-defaults,nf4dq-mb4 --out "$OUT/seq1024_reference.json" > "$OUT/seq1024_reference.log" 2>&1
    timeout 340 python3 bench/train_throughput.py --model-dir /tmp/llama3-8b --steps 8 --impls qsweep \
      --configs qlora-mb2-liger,qlora-mb2-compile-bf16emb,qlora-mb4-liger,nf4dq-mb4-liger,nf4dq-mb4-compile-bf16emb,nf4dq-mb8-liger-relax16 \
      --out "$OUT/seq1024_qsweep.json" > "$OUT/seq1024_qsweep.log" 2>&1
    ;;
esac
tail -n 30 "$OUT"/*.log
