"""transformers' Trainer with nezha_kernels models: checkpoints that ``from_pretrained`` loads back.

The plain ``transformers.Trainer`` trains and evaluates our task models as they are (they take ``labels`` /
``start_positions`` and return the loss first, and have ``main_input_name``). Saving is where it falls short:
for a model that is not a transformers ``PreTrainedModel`` it writes the bare state dict, without
config.json, and safetensors refuses the tied MLM weights. :class:`NezhaTrainer` writes the same files as
``save_pretrained`` instead (config.json, and the weights without the tied aliases); everything else is
Trainer's. Importing this module imports transformers.
"""

from __future__ import annotations

import transformers

from ..models.checkpoint import save_config, unsaved_keys
from ..models.modeling import NezhaPreTrainedModel

__all__ = ["NezhaTrainer"]


class NezhaTrainer(transformers.Trainer):
    """``transformers.Trainer`` whose checkpoints and ``save_model()`` of a nezha_kernels model are
    ``save_pretrained`` directories (``NezhaFor*.from_pretrained(dir)`` loads them; resuming and
    ``load_best_model_at_end`` work). Other models are saved as Trainer does."""

    def _save(self, output_dir: str | None = None, state_dict=None):
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if not isinstance(model, NezhaPreTrainedModel):
            return super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if state_dict is None:
            state_dict = model.state_dict()
        tied = set(unsaved_keys(model))
        # Trainer writes the weights (safetensors or pickle, as args.save_safetensors says), the tokenizer and
        # the training arguments; without the aliases the file is what save_pretrained writes.
        super()._save(output_dir, {k: v for k, v in state_dict.items() if k not in tied})
        save_config(model, output_dir)
