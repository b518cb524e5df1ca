"""Fine-tune BERT on GLUE MRPC with a plain PyTorch loop -- as the Hugging Face course does it.

This is a user's script, written for a machine with internet: it names everything by
its hub name. hpcft's test runs it *unmodified* on a compute node with no route to any
hub, after ``hpcft stage bert-base-uncased glue/mrpc``.
"""

import argparse
import os

import evaluate
import torch
from datasets import load_dataset
from torch.optim import AdamW
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, get_scheduler

parser = argparse.ArgumentParser()
parser.add_argument("--max-steps", type=int, default=100)
parser.add_argument("--lr", type=float, default=5e-5)
parser.add_argument("--output-dir", default=os.environ.get("HPCFT_OUTPUT_DIR", "bert-finetuned-mrpc"))
args = parser.parse_args()

checkpoint = "bert-base-uncased"
raw_datasets = load_dataset("glue", "mrpc")
tokenizer = AutoTokenizer.from_pretrained(checkpoint)


def tokenize_function(example):
    return tokenizer(example["sentence1"], example["sentence2"], truncation=True)


tokenized_datasets = raw_datasets.map(tokenize_function, batched=True)
tokenized_datasets = tokenized_datasets.remove_columns(["sentence1", "sentence2", "idx"])
tokenized_datasets = tokenized_datasets.rename_column("label", "labels")
tokenized_datasets.set_format("torch")
data_collator = DataCollatorWithPadding(tokenizer=tokenizer)

train_dataloader = DataLoader(tokenized_datasets["train"], shuffle=True, batch_size=8, collate_fn=data_collator)
eval_dataloader = DataLoader(tokenized_datasets["validation"], batch_size=8, collate_fn=data_collator)

model = AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=2)
optimizer = AdamW(model.parameters(), lr=args.lr)
lr_scheduler = get_scheduler("linear", optimizer=optimizer, num_warmup_steps=0, num_training_steps=args.max_steps)
device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
model.to(device)

model.train()
step = 0
while step < args.max_steps:
    for batch in train_dataloader:
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        step += 1
        if step % 5 == 0:
            print(f"step {step} loss {loss.item():.4f}", flush=True)
        if step >= args.max_steps:
            break

metric = evaluate.load("glue", "mrpc")
model.eval()
for batch in eval_dataloader:
    batch = {k: v.to(device) for k, v in batch.items()}
    with torch.no_grad():
        outputs = model(**batch)
    predictions = torch.argmax(outputs.logits, dim=-1)
    metric.add_batch(predictions=predictions, references=batch["labels"])
print("eval:", metric.compute(), flush=True)

model.save_pretrained(args.output_dir)
tokenizer.save_pretrained(args.output_dir)
print(f"saved to {args.output_dir}", flush=True)
