"""The Matformer network in MindSpore and its checkpoint format."""
