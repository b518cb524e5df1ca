"""A user's own LoRA SFT script, as peft's and transformers' tutorials write it: hub ids, no
hpcft imports. hpcft runs it unmodified as a ``script:`` job, offline.

    python sft_peft.py DATA.jsonl OUTPUT_DIR
"""

import json
import sys

from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import (
                          AutoModelForCausalLM,
                          AutoTokenizer,
                          DataCollatorForLanguageModeling,
                          Trainer,
                          TrainingArguments,
)

MODEL = "meta-llama/Meta-Llama-3-8B-Instruct"
data, out = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(MODEL)
tok.pad_token = tok.pad_token or tok.eos_token
rows = [json.loads(line) for line in open(data)]
texts = [tok.apply_chat_template([{"role": "user", "content": r["instruction"]},
                                  {"role": "assistant", "content": r["output"]}], tokenize=False) for r in rows]
ds = Dataset.from_dict(dict(tok(texts, truncation=True, max_length=64)))
model = get_peft_model(AutoModelForCausalLM.from_pretrained(MODEL),
                       LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
trainer = Trainer(model=model, train_dataset=ds, data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
                  args=TrainingArguments(output_dir=out, per_device_train_batch_size=8, num_train_epochs=1,
                                         learning_rate=1e-3, report_to="none", use_cpu=True, save_strategy="no"))
result = trainer.train()
model.save_pretrained(out)
print(f"SFT-DONE loss {result.training_loss:.4f}")
