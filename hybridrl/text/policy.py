"""``CausalLMPolicy``: a ``transformers`` causal LM as a policy over completions, with sampling that returns the
behaviour log-probs and batched log-probs of given completions.

Weights load from a local directory, safetensors only (``local_files_only``: nothing is downloaded). With
``lora_rank > 0`` a ``peft`` LoRA adapter is trained and the reference model is the base under the disabled adapter
(no second copy); without LoRA, ``reference=True`` keeps a frozen copy.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
from pathlib import Path

import torch
from torch import Tensor

from hybridrl.errors import PolicyError

_HASH_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
               "tokenizer.model")


def _quiet() -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def tokenizer_hash(model_dir: str | os.PathLike) -> str:
    """sha256 over the tokenizer files of ``model_dir`` (names + bytes): two directories with the same hash encode
    text to the same token ids."""
    h = hashlib.sha256()
    found = False
    for name in _HASH_FILES:
        p = Path(model_dir) / name
        if p.is_file():
            found = True
            h.update(name.encode())
            h.update(p.read_bytes())
    if not found:
        raise PolicyError(f"{model_dir}: no tokenizer files ({', '.join(_HASH_FILES[:2])}); expected a "
                          "transformers model directory saved with its tokenizer")
    return h.hexdigest()


def _cache(out):
    """The KV cache of a model output (``cache`` in transformers >= 5.2x, ``past_key_values`` before)."""
    return out["cache"] if "cache" in out else out["past_key_values"]


def _cache_kw(model) -> str:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _keep(model, n: int) -> dict:
    """``{"logits_to_keep": n}`` when the model's forward takes it (transformers causal LMs since 4.50), else ``{}``:
    only the last ``n`` positions get logits, so the prompt's ``[B, P, vocab]`` logits are never built (with a 150k
    vocabulary they dominate memory and time)."""
    return {"logits_to_keep": n} if _takes_logits_to_keep(type(model.get_base_model() if hasattr(
        model, "get_base_model") else model)) else {}


@functools.cache
def _takes_logits_to_keep(cls) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def position_ids(mask: Tensor) -> Tensor:
    """Positions for left-padded rows: 0 at each row's first real token (padding gets 0)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class CausalLMPolicy:
    """A causal LM policy pi(y|x) over completion tokens.

    Args:
        model: a ``transformers`` ``PreTrainedModel`` (or a ``peft`` model around one).
        tokenizer: its tokenizer (``pad_token_id``, ``eos_token_id`` must be set).
        reference: a frozen reference model, ``"adapter"`` (the peft base with the adapter disabled) or None.
        device: torch device string.
    """

    def __init__(self, model, tokenizer, reference=None, device: str = "cpu"):
        self.model = model.to(device)
        self.tokenizer = tokenizer
        self.reference = reference.to(device) if isinstance(reference, torch.nn.Module) else reference
        self.device = torch.device(device)
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise PolicyError("the tokenizer needs pad_token_id and eos_token_id (set tokenizer.pad_token)")
        self.pad_id, self.eos_id = int(tokenizer.pad_token_id), int(tokenizer.eos_token_id)

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu", lora_rank: int = 0, lora_alpha: float = 16.0,
             reference: bool = True, dtype: str = "float32") -> CausalLMPolicy:
        """Load ``AutoModelForCausalLM`` and ``AutoTokenizer`` from the local directory ``path``.

        Raises:
            PolicyError: ``path`` is not a directory, has no ``*.safetensors`` weights, or does not load.
        """
        path = Path(path)
        if not path.is_dir():
            raise PolicyError(f"model directory {path} does not exist")
        if not any(path.glob("*.safetensors")):
            raise PolicyError(f"{path}: no *.safetensors weights (pickled .bin weights are not loaded; convert them "
                              "with save_pretrained(safe_serialization=True))")
        _quiet()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kw = {} if dtype == "float32" else {"dtype": getattr(torch, dtype)}  # `torch_dtype` before transformers 4.56
        try:
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, use_safetensors=True, **kw)
        except (OSError, ValueError) as e:
            raise PolicyError(f"cannot load the causal LM in {path}: {e}") from None
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        ref = None
        if lora_rank > 0:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=0.0,
                                                     target_modules="all-linear"))
            ref = "adapter" if reference else None
        elif reference:
            ref = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, use_safetensors=True, **kw)
            ref.requires_grad_(False).eval()
        policy = cls(model, tok, ref, device)
        policy.path = path
        return policy

    def save(self, out: str | os.PathLike) -> Path:
        """Save weights (safetensors; merged LoRA adapters are saved as the adapter) and the tokenizer to ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        return out

    def parameters(self):
        """The trainable parameters (LoRA weights only under LoRA)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def state_dict(self) -> dict[str, Tensor]:
        """The trainable parameters by name (for checkpoints)."""
        return {k: v.detach().clone() for k, v in self.model.named_parameters() if v.requires_grad}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        params = dict(self.model.named_parameters())
        missing = set(k for k, v in params.items() if v.requires_grad) - set(state)
        if missing:
            raise PolicyError(f"checkpoint lacks parameters {sorted(missing)[:3]}")
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v)

    # ----------------------------------------------------------------------------------------------- log-probs
    def _forward_logp(self, model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature) -> Tensor:
        ids = torch.cat([prompt_ids, completion_ids], 1).to(self.device)
        mask = torch.cat([prompt_mask, completion_mask], 1).to(self.device)
        c = completion_ids.shape[1]
        logits = model(input_ids=ids, attention_mask=mask.long(), position_ids=position_ids(mask),
                       **_keep(model, c + 1)).logits
        n = logits.shape[1]  # P + C, or C + 1 with logits_to_keep: positions P−1 … P+C−2 predict the completion
        logits = logits[:, n - c - 1: n - 1].float() / temperature
        target = completion_ids.to(self.device)
        lp = logits.gather(-1, target[..., None]).squeeze(-1) - torch.logsumexp(logits, -1)
        return lp * completion_mask.to(self.device)

    def logprobs(self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor, completion_mask: Tensor,
                 temperature: float = 1.0) -> Tensor:
        """log pi(y_t | x, y_<t) at ``temperature`` (logits / T), ``[B, C]`` float32, 0 on padding; differentiable."""
        return self._forward_logp(self.model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature)

    @torch.no_grad()
    def ref_logprobs(self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor, completion_mask: Tensor,
                     temperature: float = 1.0) -> Tensor:
        """log pi_ref(y_t | ·) of the reference model (base under the disabled adapter, or the frozen copy).

        Raises: PolicyError when the policy was loaded without a reference."""
        args = (prompt_ids, prompt_mask, completion_ids, completion_mask, temperature)
        if self.reference == "adapter":
            with self.model.disable_adapter():
                return self._forward_logp(self.model, *args)
        if self.reference is None:
            raise PolicyError("this policy has no reference model: load it with reference=True or LoRA")
        return self._forward_logp(self.reference, *args)

    # ----------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, prompt_ids: Tensor, prompt_mask: Tensor, max_new_tokens: int, temperature: float = 1.0,
               top_p: float = 1.0, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Sample completions of left-padded prompts ``[B, P]`` with a KV cache.

        ``temperature`` 0 is greedy decoding. Returns ``(completion_ids [B, C], completion_mask [B, C] bool,
        behavior_logp [B, C])``: completions are right-padded, end with EOS when finished within
        ``max_new_tokens`` (else they are truncated), and ``behavior_logp`` is log softmax(logits / T) of the sampled
        token over the *full* vocabulary (T = 1 for greedy) — what :meth:`logprobs` recomputes at the same
        temperature (top-p filtering is not part of it: record ``top_p`` in the corpus sidecar).
        """
        self.model.eval()
        prompt_ids, prompt_mask = prompt_ids.to(self.device), prompt_mask.to(self.device)
        b = prompt_ids.shape[0]
        attn = prompt_mask.long()
        pos = position_ids(prompt_mask)
        out = self.model(input_ids=prompt_ids, attention_mask=attn, position_ids=pos, use_cache=True,
                         **_keep(self.model, 1))
        past, logits = _cache(out), out.logits[:, -1].float()
        finished = torch.zeros(b, dtype=torch.bool, device=self.device)
        toks, lps, masks = [], [], []
        t_eff = temperature if temperature > 0 else 1.0
        for step in range(max_new_tokens):
            logp_all = torch.log_softmax(logits / t_eff, -1)
            if temperature <= 0:
                tok = logits.argmax(-1)
            else:
                probs = logp_all.exp()
                if top_p < 1.0:
                    sp, si = probs.sort(-1, descending=True)
                    drop = sp.cumsum(-1) - sp > top_p
                    probs = torch.zeros_like(probs).scatter(-1, si, sp.masked_fill(drop, 0.0))
                tok = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(self.device)
            tok = torch.where(finished, torch.full_like(tok, self.pad_id), tok)
            toks.append(tok)
            lps.append(logp_all.gather(-1, tok[:, None]).squeeze(-1))
            masks.append(~finished)
            finished = finished | (tok == self.eos_id)
            if step == max_new_tokens - 1 or bool(finished.all()):  # no forward pass whose logits go unused
                break
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], 1)
            pos = pos[:, -1:] + 1
            out = self.model(input_ids=tok[:, None], attention_mask=attn, position_ids=pos, use_cache=True,
                             **{_cache_kw(self.model): past})
            past, logits = _cache(out), out.logits[:, -1].float()
        mask = torch.stack(masks, 1)
        return torch.stack(toks, 1).cpu(), mask.cpu(), (torch.stack(lps, 1) * mask).cpu()

    def model_hash(self) -> str:
        """sha256 of the current trainable weights (identifies the behaviour policy of a logged corpus)."""
        h = hashlib.sha256()
        for k, v in sorted(self.model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()
