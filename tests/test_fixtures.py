from transformers import AutoModelForCausalLM, AutoTokenizer


def test_tiny_model_loads_and_runs_a_chat_template(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 12 + 7?"}, {"role": "assistant", "content": "19"}],
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    out = model(input_ids=ids)
    assert out.logits.shape == (1, ids.shape[1], len(tokenizer))
