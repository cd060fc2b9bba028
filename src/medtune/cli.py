"""`medtune` command line: each subcommand is a thin shell over one API call."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medtune import __version__
from medtune.answer import add_model_arguments, answerer_from_args, check_threshold
from medtune.rundir import RunDir
from medtune.tasks import SUITES

EPILOG = "Run 'medtune COMMAND --help' for a command's options. Docs: README.md."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medtune", epilog=EPILOG,
                                     description="Fine-tune, evaluate and serve small language models on "
                                                 "medical multiple-choice questions, on any PyTorch device.")
    parser.add_argument("--version", action="version", version=f"medtune {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="fine-tune a LoRA adapter", epilog=EPILOG,
                                description="Fine-tune a LoRA adapter on multiple-choice questions. Settings "
                                            "resolve as command line > --config YAML > defaults (TrainConfig's; "
                                            "the Qwen3-1.7B GPU recipe is configs/qwen3-1.7b-lora.yaml). With "
                                            "--resume they start from the run's saved config.yaml instead.")
    train.add_argument("--model", help="base model: Hub id, local folder or .gguf file (default Qwen/Qwen3-1.7B)")
    train.add_argument("--data", action="append", metavar="[TASK=]SOURCE",
                       help="training data: Hub dataset id or a local .jsonl/.json/.parquet/.csv file, optionally "
                            "prefixed by the task whose reader reads it (pubmedqa=ori_pqal.json); give it several "
                            "times to train on a mixture (weights: a data list in the --config YAML)")
    train.add_argument("--eval-data", metavar="[TASK=]SOURCE",
                       help="held-out data: rows found here are kept out of the dev and calibration slices, the "
                            "training rows' overlap with it is recorded in the manifest, and after training the base "
                            "model and the tuned run are scored on it and compared, paired (RUN/eval/base, "
                            "RUN/eval/tuned, RUN/eval/comparison.json)")
    train.add_argument("--no-compare", action="store_true",
                       help="with --eval-data: skip the base-vs-tuned evaluation after training (compare_base=false)")
    train.add_argument("--columns", metavar="KEY=COLUMN,...",
                       help="your own question bank's column names for the one --data file (see README, Data); "
                            "in a mixture, give each source its columns in the YAML data list")
    train.add_argument("--exclude-overlap", action="store_true", default=None,
                       help="drop training rows that overlap --eval-data (exact, same question, or a shared "
                            "13-gram), counted in report.json")
    train.add_argument("--output", required=True, help="run directory to create (or resume)")
    train.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    train.add_argument("--epochs", type=float, help="passes over the training rows (default 1)")
    train.add_argument("--limit", type=int, help="use the first N valid training rows")
    train.add_argument("--config", help="YAML file of settings (see configs/)")
    train.add_argument("--resume", action="store_true",
                       help="continue from the run's last checkpoint, with its saved settings (config.yaml); "
                            "settings given again override them")
    train.add_argument("--overwrite", action="store_true",
                       help="start over in an --output folder that holds a run (finished or interrupted): "
                            "its adapter, checkpoints and logs are deleted")
    train.add_argument("--skip-invalid", action="store_true",
                       help="skip invalid rows (counted by reason in report.json) instead of stopping at the first")
    train.add_argument("--answer-base", type=int, choices=[0, 1],
                       help="integer answers are 0-based (Hub) or 1-based (original release), when data cannot tell")
    train.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps")
    train.add_argument("--dtype", help="auto | bf16 | fp16 | fp32")
    train.add_argument("--quantize", choices=["auto", "none", "4bit", "8bit"],
                       help="QLoRA through bitsandbytes where the backend supports it; auto quantizes only when "
                            "the memory plan says 16-bit LoRA does not fit")
    train.add_argument("--memory-budget", metavar="SIZE",
                       help="memory the run may use, e.g. 6GB or 24GiB (default: the GPU's memory, or the memory "
                            "available now on the CPU): gradient_checkpointing=auto (the default) and --quantize auto "
                            "plan against it; `medtune plan --memory-budget` shows the same decision")
    train.add_argument("--cuda-visible-devices", help="set CUDA_VISIBLE_DEVICES before the first CUDA call")
    train.add_argument("--hip-visible-devices", help="set HIP_VISIBLE_DEVICES before the first HIP call (ROCm)")
    train.add_argument("--trust-remote-code", action="store_true", default=None,
                       help="allow code from the model repository to run")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("overrides", nargs="*", metavar="key=value",
                       help="any other setting, e.g. lora_r=8 learning_rate=1e-4 (see TrainConfig)")

    evaluate = commands.add_parser("eval", help="score a model or run on labelled questions", epilog=EPILOG,
                                   description="Score each question by the answer letters' probabilities (one forward "
                                               "pass per question); write metrics.json and predictions.jsonl.")
    add_model_arguments(evaluate)
    evaluate.add_argument("--data", help="Hub dataset id or local file (or --suite instead)")
    evaluate.add_argument("--task", help="the benchmark --data belongs to (medmcqa, medqa_4options, medqa, pubmedqa, "
                                         "mmlu_<subject>): it picks the reader and the default split; without "
                                         "--data, the task's Hub copy is read. Default: detected from the file")
    evaluate.add_argument("--columns", metavar="KEY=COLUMN,...",
                          help="your own question bank's column names, e.g. question=stem,options=opt1|opt2|opt3|"
                               "opt4,answer=key,explanation=rationale,subject=area (see README, Data)")
    evaluate.add_argument("--suite", choices=sorted(SUITES),
                          help="score every task of a benchmark suite instead of --data: medical = medmcqa, "
                               "medqa_4options, pubmedqa and six MMLU subjects; writes OUTPUT/<task>/ and "
                               "OUTPUT/suite.json")
    evaluate.add_argument("--source", action="append", metavar="TASK=PATH",
                          help="with --suite: read TASK from a local file or folder instead of its Hub id; "
                               "mmlu=FOLDER for the six MMLU CSVs; give it once per task")
    evaluate.add_argument("--limit-per-task", type=int, help="with --suite: the first N valid questions of each task")
    evaluate.add_argument("--split", help="split to read (default: the task's scored split; a Hub id without "
                                          "--task: validation; a local file: the whole file)")
    evaluate.add_argument("--limit", type=int, help="the first N valid questions")
    evaluate.add_argument("--output", required=True, help="folder for metrics.json and predictions.jsonl "
                                                           "(generations.jsonl with --generative)")
    evaluate.add_argument("--overwrite", action="store_true",
                          help="replace the results in an --output folder that already holds metrics.json")
    evaluate.add_argument("--batch-size", type=int, default=16,
                          help="questions per forward pass at a task's longest prompts (default 16); shorter prompts "
                               "fill the same token budget, up to 8x as many")
    evaluate.add_argument("--batch-tokens", type=int, metavar="T",
                          help="token budget per forward pass (questions x the longest prompt in the pass); "
                               "default: --batch-size x the task's longest prompt")
    evaluate.add_argument("--skip-invalid", action="store_true", help="skip invalid rows, counted in metrics.json")
    evaluate.add_argument("--answer-base", type=int, choices=[0, 1], help="see 'medtune train --help'")
    evaluate.add_argument("--generative", action="store_true",
                          help="also generate and parse a strict 'Answer: X' (unparseable counts as wrong)")
    evaluate.add_argument("--max-new-tokens", type=int, default=16, help="generation length for --generative")
    evaluate.add_argument("--num-fewshot", type=int, default=0, metavar="K",
                          help="show K solved exemplars before every question (default 0): the first K rows of the "
                               "task's few-shot split (MMLU: dev, as lm-evaluation-harness; others: train), never "
                               "the scored rows; recorded in metrics.json")
    evaluate.add_argument("--fewshot-data", metavar="SOURCE",
                          help="with --num-fewshot: read the exemplars from this file, folder or Hub id instead of "
                               "--data's few-shot split")
    evaluate.add_argument("--permutations", choices=["none", "cyclic"], default="none",
                          help="cyclic: also score every question under each cyclic shift of its options and report "
                               "option-order robustness (accuracy per shift, consistency, letter prior, "
                               "permutation-averaged accuracy) in metrics.json and permutations.jsonl. Costs k forward "
                               "passes per question on top of the plain scoring (k = its number of options; k times "
                               "more where options are scored as several tokens). Default none")

    ask = commands.add_parser("ask", help="answer one question with probabilities and an explanation", epilog=EPILOG)
    add_model_arguments(ask)
    ask.add_argument("--question", required=True)
    ask.add_argument("--option", action="append", required=True, help="an answer option; give 2 to 5 times")
    ask.add_argument("--no-explain", action="store_true", help="skip generating the explanation")
    ask.add_argument("--max-new-tokens", type=int, default=160, help="explanation length limit (tokens)")
    ask.add_argument("--json", action="store_true", help="print one JSON object")
    ask.add_argument("--abstain-below", type=float, metavar="P",
                     help="say the model abstains when its top option's probability is below P (0 to 1); the "
                          "letter and probabilities are still printed (default: only a tie abstains)")

    plan = commands.add_parser("plan", help="estimate peak training memory and the settings that fit", epilog=EPILOG,
                               description="Estimate peak training memory (weights, adapters, gradients, optimizer "
                                           "state, activations, logits, overhead) before running out of it.")
    from medtune.plan import add_arguments as add_plan_arguments

    add_plan_arguments(plan)

    doctor = commands.add_parser("doctor", help="devices, dtypes, quantization and why", epilog=EPILOG,
                                 description="Report the PyTorch build, devices, bf16 support, attention and "
                                             "quantization options, the environment, and a numeric probe per "
                                             "dtype; end with the recommended device, dtype and quantization.")
    from medtune.doctor import add_arguments as add_doctor_arguments

    add_doctor_arguments(doctor)

    compare = commands.add_parser(
        "compare", help="did it help? two evaluations compared question by question", epilog=EPILOG,
        description="Compare two `medtune eval` output folders (or two --suite folders: per task and on the "
                    "averages) on the questions both scored, matched by id: the accuracy difference with a paired "
                    "bootstrap 95% interval (10,000 resamples, seed 0), McNemar's exact test, and a verdict.")
    compare.add_argument("eval_a", metavar="EVAL_A", help="the first evaluation folder (e.g. the base model's)")
    compare.add_argument("eval_b", metavar="EVAL_B", help="the second (e.g. the tuned run's); differences are B - A")
    compare.add_argument("--json", action="store_true", help="print the whole comparison as one JSON object")

    calibrate = commands.add_parser(
        "calibrate", help="fit the run's temperature (calibrated probabilities) on held-out questions",
        epilog=EPILOG,
        description="Fit one temperature T that minimises the negative log-likelihood of the gold options "
                    "(temperature scaling, Guo et al. 2017) on labelled questions that are never reported, and "
                    "write RUN_DIR/calibration.json; eval, ask, the Python API and serve then report calibrated "
                    "probabilities (the chosen answer never changes). Data that overlaps the run's --eval-data or "
                    "its eval/ predictions is refused.")
    calibrate.add_argument("run_dir", metavar="RUN_DIR", help="a finished training run")
    calibrate.add_argument("--data", required=True, metavar="SRC",
                           help="labelled calibration questions: Hub dataset id or local file, not the eval data")
    calibrate.add_argument("--task", help="the benchmark --data belongs to (picks the reader and default split)")
    calibrate.add_argument("--split", help="split to read (default as for 'medtune eval')")
    calibrate.add_argument("--limit", type=int, help="the first N valid questions")
    calibrate.add_argument("--columns", metavar="KEY=COLUMN,...", help="your own file's column names (see README)")
    calibrate.add_argument("--skip-invalid", action="store_true", help="skip invalid rows instead of stopping")
    calibrate.add_argument("--answer-base", type=int, choices=[0, 1], help="see 'medtune train --help'")
    calibrate.add_argument("--batch-size", type=int, default=16, help="questions per forward pass (default 16)")
    calibrate.add_argument("--overwrite", action="store_true", help="replace an existing calibration.json")
    calibrate.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: auto)")
    calibrate.add_argument("--dtype", default="auto", help="auto | bf16 | fp16 | fp32 (default: auto, as eval)")

    serve = commands.add_parser("serve", help="answer over HTTP: a REST API and a web page", epilog=EPILOG)
    from medtune.serve import add_arguments as add_serve_arguments

    add_serve_arguments(serve)

    quick = commands.add_parser("quickstart", help="the CPU demo: fine-tune, compare with the base, report",
                                epilog=EPILOG,
                                description="Fine-tune SmolLM2-135M-Instruct on CPU (a few steps), score the base "
                                            "and the tuned model on the same held-out questions (the shipped "
                                            "MedMCQA slice's 322 when the Hub is unreachable), and print the paired "
                                            "comparison's verdict, the calibration before/after and the report's "
                                            "path.")
    quick.add_argument("--output", default="runs/quickstart", help="where the run and its report go")
    quick.add_argument("--data", help="local MedMCQA training file (default: Hub MedMCQA, else the shipped slice)")
    quick.add_argument("--eval-data", help="local held-out file (with --data)")
    quick.add_argument("--limit", type=int, default=None, help="training rows read (default: all of the shipped "
                                                                "slice, or 400 with Hub/--data)")
    quick.add_argument("--eval-limit", type=int, default=None,
                       help="held-out questions (default: all 322 of the shipped slice, or 400 with Hub/--data)")
    quick.add_argument("--epochs", type=float, default=None,
                       help="passes over the training rows (default: 4 optimizer steps of 8 rows)")

    report = commands.add_parser(
        "report", help="runs, evaluations, suites and comparisons as one HTML page", epilog=EPILOG,
        description="Write one self-contained HTML report (figures inline, no network request) of run folders, "
                    "`medtune eval` folders, suite folders and `medtune compare --json` files, with each figure "
                    "also saved as a PNG beside it.")
    report.add_argument("paths", nargs="+", metavar="PATH", help="a run, eval or suite folder, or a comparison JSON")
    report.add_argument("--output", default="report.html", help="the HTML file to write (default: report.html)")

    data = commands.add_parser("data", help="inspect data sets: overlap between training and evaluation rows",
                               epilog=EPILOG)
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    overlap = data_commands.add_parser(
        "overlap", help="training rows that duplicate or share 13-grams with evaluation rows", epilog=EPILOG,
        description="Compare training rows with evaluation rows: exact duplicates (question + options), the same "
                    "question with other options, and shared 13-grams of the question (lm-evaluation-harness's "
                    "decontamination test). Each source is a file, a Hub dataset id, or TASK=PATH.")
    overlap.add_argument("--train", action="append", required=True, metavar="SRC",
                         help="training data (file, Hub id or TASK=PATH); give it once per source")
    overlap.add_argument("--eval", action="append", required=True, metavar="SRC",
                         help="evaluation data (file, Hub id, TASK=PATH or mmlu=FOLDER); once per source")
    overlap.add_argument("--skip-invalid", action="store_true", help="skip invalid rows (counted per source)")
    overlap.add_argument("--json", action="store_true", help="print the whole report (every id) as one JSON object")
    _add_publish_parsers(commands)
    _add_export_parser(commands)
    return parser


def _add_run_arguments(parser) -> None:
    """RUN_DIR and --base-model, as export, card, push and space all take them."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished training run")
    parser.add_argument("--base-model", metavar="HUB_ID",
                        help="the base model's Hub id, when the run was trained from a local folder")


def _add_export_parser(commands) -> None:
    export = commands.add_parser(
        "export", help="the run for others: the adapter, a merged model or a GGUF file, verified", epilog=EPILOG,
        description="Write a clean copy of the run's adapter (with the base's Hub id, the card, prompt.yaml and "
                    "scoring.json), or with --merge the merged model (fp32 safe merge, cast to --dtype, sharded), "
                    "or with --gguf also a GGUF file and an Ollama Modelfile. Each export is checked on a few "
                    "questions against the run and the figures written to verification.json.")
    _add_run_arguments(export)
    export.add_argument("--output", required=True, metavar="DIR", help="the folder to create (new or empty)")
    export.add_argument("--merge", action="store_true", help="merge the adapter into the base model")
    export.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                        help="the merged weights' dtype (default auto: the base checkpoint's own)")
    export.add_argument("--max-shard-size", default="2GB", help="largest safetensors shard (default 2GB)")
    export.add_argument("--gguf", action="store_true",
                        help="also convert the merged model to GGUF (llama.cpp, Ollama) and write a Modelfile; "
                             "implies --merge; needs `pip install 'medtune[gguf]'`")
    export.add_argument("--gguf-type", choices=["bf16", "f16", "f32", "q8_0"], default="bf16",
                        help="GGUF weight type (default bf16); K-quants: llama.cpp's llama-quantize (README)")
    export.add_argument("--check-data", metavar="FILE",
                        help="check questions (default: the first 8 of the shipped demo set)")


def _add_publish_parsers(commands) -> None:
    """`card`, `push` and `space` (medtune.publish): the run as others will see it."""
    card = commands.add_parser("card", help="write the run's model card (README.md) for the Hub", epilog=EPILOG,
                               description="Write README.md, a medical model card: Hub front matter with a "
                                           "model-index of every evaluation, intended and out-of-scope use, data "
                                           "with sha256 and license, hyperparameters, hardware, evaluation with "
                                           "95% CIs, baselines, the paired comparison and calibration, "
                                           "limitations, and how to load it. Every figure is read from the run.")
    push = commands.add_parser("push", help="upload the run (adapter, card, prompt, evaluation) to the Hub",
                               epilog=EPILOG,
                               description="Stage the files to publish (adapter with the base's Hub id, card, "
                                           "prompt.yaml, manifest and config without local paths, calibration, "
                                           "eval metrics; never checkpoints, logs or training data) and upload "
                                           "them with huggingface_hub (token: HF_TOKEN or `hf auth login`).")
    for parser in (card, push):
        _add_run_arguments(parser)
        parser.add_argument("--eval", action="append", default=[], metavar="DIR",
                            help="a `medtune eval` output folder to report; repeatable (default: the run's "
                                 "eval/base and eval/tuned)")
        parser.add_argument("--suite", metavar="DIR", help="a `medtune eval --suite` output folder to report")
    card.add_argument("--output", metavar="DIR", help="folder for README.md (default: RUN_DIR)")
    card.add_argument("--merged", action="store_true", help="the card of a merged export (library transformers)")
    card.add_argument("--repo", metavar="OWNER/NAME", help="the repository the card is for (loading examples)")
    push.add_argument("--repo", required=True, metavar="OWNER/NAME", help="the Hub model repository (created "
                                                                            "if missing)")
    push.add_argument("--merged", metavar="EXPORT_DIR",
                      help="upload the merged model of this `medtune export RUN_DIR --merge --output EXPORT_DIR` "
                           "folder instead of the adapter (its card says library transformers)")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--dry-run", action="store_true", help="list every file with its size and show the card; "
                                                             "upload nothing")
    space = commands.add_parser("space", help="write a Docker Space folder that serves the run", epilog=EPILOG,
                                description="Write a ready Hugging Face Docker Space: Dockerfile (CPU torch), "
                                            "app.py (`medtune serve` on 0.0.0.0:7860), requirements.txt, the "
                                            "medtune package, the clean run (or --model-repo), and a README "
                                            "with the Space front matter and the MEDTUNE_API_KEY secret.")
    _add_run_arguments(space)
    space.add_argument("--output", required=True, metavar="DIR", help="the Space folder to create")
    space.add_argument("--model-repo", metavar="OWNER/NAME",
                       help="serve this pushed model repository (`medtune push`), downloaded at start-up, "
                            "instead of copying the run into the folder")


def _run_train(args) -> int:
    from medtune.config import load_config, parse_overrides, parse_source
    from medtune.train import train

    flags = {name: getattr(args, name) for name in ("model", "data", "eval_data", "output", "max_steps", "epochs",
                                                    "limit", "answer_base", "device", "dtype",
                                                    "cuda_visible_devices", "hip_visible_devices", "quantize",
                                                    "memory_budget")}
    if args.data:  # one --data stays text, as a config file spells it; several make a mixture
        flags["data"] = args.data[0] if len(args.data) == 1 else args.data
    if args.columns:
        if len(args.data or []) != 1:
            raise ValueError("--columns maps the columns of one --data file; for several sources give each its "
                             "columns in the YAML data list")
        flags["data"] = [parse_source(args.data[0]).to_dict() | {"columns": args.columns}]
    flags.update(skip_invalid=args.skip_invalid or None, resume=args.resume or None,
                 exclude_overlap=args.exclude_overlap, compare_base=False if args.no_compare else None,
                 overwrite=args.overwrite or None, trust_remote_code=args.trust_remote_code)
    if args.resume and args.overwrite:
        raise ValueError("--resume continues a run and --overwrite deletes it: give one of them")
    settings = args.config
    saved = RunDir(args.output).config
    if args.resume and saved.exists():  # the run's own settings; only what is given again overrides them
        if args.config:
            raise ValueError(f"--resume uses the run's saved settings ({saved}); drop --config and pass the "
                             "settings to change as key=value")
        settings = str(saved)
    # a flag and a key=value for the same setting: the flag wins, as it is the more specific spelling
    given = {name: value for name, value in flags.items() if value is not None}
    config = load_config(settings, **(parse_overrides(args.overrides) | given))
    try:
        train(config, progress=not args.quiet)
    except KeyboardInterrupt:
        checkpoint = RunDir(config.output).latest_checkpoint()
        where = f"the last checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written yet"
        print(f"medtune train: interrupted; {where}. Continue with: medtune train --output {config.output} "
              "--resume", file=sys.stderr)
        return 130
    return 0


def _run_eval(args) -> int:
    from medtune.data import is_local, load_examples
    from medtune.evaluate import check_output, evaluate_to_dir, load_fewshot, task_of

    if args.suite or args.source or args.limit_per_task is not None:
        return _run_eval_suite(args)
    if not args.data and not args.task:
        raise ValueError("give --data (a file or Hub dataset id), --task (its Hub copy) or --suite medical")
    check_output(Path(args.output), args.overwrite)  # before minutes of loading, not after
    hub_without_task = args.data and not args.task and not is_local(args.data)
    examples, report = load_examples(args.data, task=args.task, columns=args.columns,
                                     split=args.split or ("validation" if hub_without_task else None),
                                     answer_base=args.answer_base, skip_invalid=args.skip_invalid, limit=args.limit)
    task = args.task or task_of(report.layout, examples)  # the harness format's text is the task's own
    fewshot = load_fewshot(args.fewshot_data or args.data, task, args.num_fewshot, examples,
                           answer_base=args.answer_base, skip_invalid=args.skip_invalid,
                           columns=None if args.fewshot_data else args.columns) if args.num_fewshot else ([], None)
    answerer = answerer_from_args(args)
    answerer.template = answerer.template.for_task(task).with_fewshot(*fewshot)
    _warn_if_trained_on(args.run_dir, examples)  # once the run has loaded: a broken run gets one error line
    evaluate_to_dir(answerer, examples, Path(args.output), args.batch_size, data=report.to_dict(),
                    generative_tokens=args.max_new_tokens if args.generative else None, overwrite=args.overwrite,
                    permutations=args.permutations, batch_tokens=args.batch_tokens)
    return 0


def _warn_if_trained_on(run_dir: str | None, examples) -> None:
    """A warning on stderr when the evaluated rows overlap the rows the run trained on (its fingerprint file)."""
    path = RunDir(run_dir).fingerprint if run_dir else None
    if path is None or not path.exists():  # --model, or a run made before runs kept a fingerprint
        return
    from medtune.data.overlap import warn_if_trained_on

    warning = warn_if_trained_on(json.loads(path.read_text(encoding="utf-8")), examples)
    if warning:
        print(f"medtune eval: warning: {warning}", file=sys.stderr)


def _run_eval_suite(args) -> int:
    from medtune.suite import run_suite

    if not args.suite:
        raise ValueError("--source and --limit-per-task belong to --suite; add --suite medical (or use --data "
                         "and --limit for one data set)")
    given = [flag for flag, value in (("--data", args.data), ("--limit", args.limit), ("--task", args.task),
                                      ("--columns", args.columns), ("--split", args.split),
                                      ("--fewshot-data", args.fewshot_data),
                                      ("--generative", args.generative)) if value]
    if given:
        raise ValueError(f"--suite scores each task's own split from its own source; drop {' and '.join(given)} "
                         "(point a task at a file with --source TASK=PATH, cap each task with --limit-per-task; "
                         "--num-fewshot takes each task's exemplars from its own source)")
    run_suite(lambda: answerer_from_args(args), args.suite, Path(args.output), args.source, args.limit_per_task,
              args.batch_size, args.overwrite, num_fewshot=args.num_fewshot, run_dir=args.run_dir,
              skip_invalid=args.skip_invalid, answer_base=args.answer_base, permutations=args.permutations,
              batch_tokens=args.batch_tokens)
    return 0


def _run_ask(args) -> int:
    check_threshold(args.abstain_below, "--abstain-below")  # before the model loads: a typo fails at once
    answerer = answerer_from_args(args)
    answer = answerer.answer(args.question, args.option, explain=not args.no_explain,
                             max_new_tokens=args.max_new_tokens, abstain_below=args.abstain_below)
    model = answerer.description
    if args.json:
        print(json.dumps({**answer.to_dict(), "abstain_below": args.abstain_below, "model": model},
                         ensure_ascii=False))
        return 0
    print(f"Answer: {answer.answer or 'none: the top options tie exactly'}")
    print(f"Confidence: {answer.confidence:.1%} ({'calibrated' if answer.calibrated else 'not calibrated'})")
    if answer.abstain and answer.answer is not None:
        print(f"The model abstains: confidence {answer.confidence:.2f} is below {args.abstain_below:.2f} "
              "(its best guess is shown; do not rely on it)")
    for letter, option in zip(answer.probs, args.option):
        print(f"  {letter}. {option:<50.50} {answer.probs[letter]:6.1%}")
    if answer.explanation is not None:
        print(f"Explanation: {answer.explanation}")
    if answer.explanation_consistent is False:
        print(f"Note: the explanation states a different answer; the model's answer is {answer.answer} "
              "(the highest probability)")
    print(f"(scored in {model['dtype']} on {model['device']}: {model['dtype_reason']})")
    return 0


def _run_quickstart(args) -> int:
    from medtune.quickstart import quickstart

    quickstart(Path(args.output), args.data, args.eval_data, args.limit, args.eval_limit, args.epochs)
    return 0


def _run_report(args) -> int:
    from medtune.report import write_report

    print(f"report -> {write_report(args.paths, Path(args.output))}")
    return 0


def _run_calibrate(args) -> int:
    from medtune.evaluation.calibration import calibrate_run

    calibrate_run(args.run_dir, args.data, task=args.task, split=args.split, limit=args.limit, columns=args.columns,
                  skip_invalid=args.skip_invalid, answer_base=args.answer_base, batch_size=args.batch_size,
                  overwrite=args.overwrite, device=args.device, dtype=args.dtype)
    return 0


def _run_compare(args) -> int:
    from medtune.evaluation.compare import compare, format_comparison

    result = compare(args.eval_a, args.eval_b, warn=lambda message: print(message, file=sys.stderr))
    print(json.dumps(result, indent=2) if args.json else format_comparison(result))
    return 0


def _run_doctor(args) -> int:
    from medtune.doctor import run

    return run(args)


def _run_serve(args) -> int:
    from medtune.serve import run

    return run(args)


def _run_plan(args) -> int:
    from medtune.plan import run

    return run(args)


def _run_data(args) -> int:
    from medtune.data.overlap import overlap_of_sources

    report = overlap_of_sources(args.train, args.eval, skip_invalid=args.skip_invalid)
    print(json.dumps(report.to_dict(), ensure_ascii=False) if args.json else report.summary())
    return 0


def _run_card(args) -> int:
    from medtune.publish.card import write_card

    path = write_card(args.run_dir, args.output or args.run_dir, args.eval, args.suite, args.merged,
                      base_model=args.base_model, repo_id=args.repo)
    print(f"model card: {path}")
    return 0


def _run_push(args) -> int:
    from medtune.publish.hub import push

    push(args.run_dir, args.repo, merged=args.merged, private=args.private, dry_run=args.dry_run,
         base_model=args.base_model, evals=args.eval, suite=args.suite)
    return 0


def _run_space(args) -> int:
    from medtune.publish.space import write_space

    folder = write_space(args.run_dir, args.output, args.model_repo, args.base_model,
                         warn=lambda message: print(message, file=sys.stderr))
    print(f"Space folder: {folder} (upload it to a Docker Space; set the secret MEDTUNE_API_KEY)")
    return 0


def _run_export(args) -> int:
    from medtune.publish.export import export

    report = export(args.run_dir, args.output, merge=args.merge, dtype=args.dtype,
                    max_shard_size=args.max_shard_size, gguf=args.gguf, gguf_type=args.gguf_type,
                    base_model=args.base_model, check_data=args.check_data)
    print(f"Exported {report['kind']} to {args.output} (checks: {Path(args.output) / 'verification.json'})")
    return 0


def _fail(command: str, message: str) -> int:
    """Print the error as one line (a user error is a sentence, never a traceback) and return exit code 2."""
    print(f"medtune {command}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"train": _run_train, "eval": _run_eval, "ask": _run_ask, "plan": _run_plan, "doctor": _run_doctor,
                "serve": _run_serve, "quickstart": _run_quickstart, "compare": _run_compare, "data": _run_data,
                "report": _run_report, "calibrate": _run_calibrate, "card": _run_card, "push": _run_push,
                "space": _run_space, "export": _run_export}
    from safetensors import SafetensorError
    from yaml import YAMLError

    from medtune.data import DataError
    from medtune.device import HardwareError
    from medtune.modeling import ModelError
    from medtune.publish.export import ExportError
    from medtune.tokenization import PromptError

    try:
        return handlers[args.command](args)
    except (DataError, PromptError, ModelError, HardwareError, ExportError, ValueError, OSError) as error:
        return _fail(args.command, str(error))
    except SafetensorError as error:  # last resort: a damaged file that no loader above put into words
        return _fail(args.command, f"a .safetensors file cannot be read ({error}): it is truncated or damaged; "
                                   "copy it again or re-create it")
    except YAMLError as error:  # last resort: a YAML file that no loader above put into words
        return _fail(args.command, f"a YAML file is malformed ({error}); fix its syntax")
    except KeyboardInterrupt:
        print(f"medtune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
