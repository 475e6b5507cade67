"""The Lightning fine-tuning engine that training methods (ESD, AC, DiMUM) and training attacks
(DiMRA) share: trainable parameters by glob, objectives as plug-ins, resume after a crash."""
