"""Inputs a paused flow run waits for (Prefect's ``prefect.input``).

``pause_flow_run(wait_for_input=Model)`` takes any pydantic model; Prefect's
docs derive such models from ``RunInput``, so code written that way runs after
changing the import line. ``RunInput`` is a pydantic model that refuses fields
it does not declare (an input with a typo is an error the resumer sees, not a
value silently dropped), and ``with_initial_data`` makes a copy of the model
whose fields default to the given values: Prefect pre-fills its form with them;
here they are what a resume without that field gets. ``description`` is the
text shown to whoever resumes the run (kept on the class; daskflow's
``runs show`` and server form read the model's JSON schema).

The sending and receiving of inputs between running flows (``send_input``,
``receive_input``) is not offered: there is no server to carry them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pydantic

__all__ = ["RunInput"]


class RunInput(pydantic.BaseModel):
    """A model of the input a paused flow run waits for: subclass it with typed fields."""

    model_config = pydantic.ConfigDict(extra="forbid")
    description: ClassVar[str | None] = None

    @classmethod
    def with_initial_data(cls, description: str | None = None, **defaults: Any) -> type[RunInput]:
        """A copy of this model whose fields named in ``defaults`` default to those values."""
        unknown = sorted(set(defaults) - set(cls.model_fields))
        if unknown:
            raise ValueError(
                f"{cls.__name__}.with_initial_data: {', '.join(unknown)} is not a field of the model; "
                f"its fields are {', '.join(cls.model_fields) or 'none'}."
            )
        fields: dict[str, Any] = {
            name: (field.annotation, pydantic.Field(default=defaults[name]))
            for name, field in cls.model_fields.items()
            if name in defaults
        }
        model: type[RunInput] = pydantic.create_model(cls.__name__, __base__=cls, **fields)
        model.description = description if description is not None else cls.description
        return model
