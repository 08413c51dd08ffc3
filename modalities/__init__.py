"""Control modalities: one declarative `Modality` per module, registered under the `avctl.modalities` entry points."""
