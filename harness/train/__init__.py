"""What training methods (ESD, AC, DiMUM, AdvUnlearn) and training attacks (DiMRA, CCE, the prompt
attacks) share: the Lightning fine-tuning engine (trainable parameters by glob, objectives as
plug-ins, resume after a crash), the data, learned prompt tokens and prompt prefixes."""
